"""One unary gRPC call over HTTP/2 with the headers given, through Python's h2 (hyper-h2).

Used by tests/it/compat.rs to send what grpc-go sends for a multi-address target
(`multi:///a:1,b:2`): an `:authority` that is a list of addresses, which h2's own header
validation would refuse to send, so validation and normalization are turned off here.

    /usr/bin/python3 h2_unary.py HOST:PORT AUTHORITY PATH REQUEST_HEX

Prints one JSON line: {"reset": CODE} when the server reset the stream, otherwise
{"headers": {...}, "trailers": {...}, "message": HEX} (the gRPC message without its 5-byte
prefix). Exits 2 on a connection error or after 10 seconds without an answer.
"""

import json
import socket
import sys

import h2.config
import h2.connection
import h2.events


def call(addr, authority, path, request):
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding="utf-8",
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(
        stream,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    body = b"\x00" + len(request).to_bytes(4, "big") + request
    conn.send_data(stream, body, end_stream=True)
    sock.sendall(conn.data_to_send())

    result = {"headers": {}, "trailers": {}}
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        for event in conn.receive_data(chunk):
            if isinstance(event, h2.events.ResponseReceived):
                result["headers"] = dict(event.headers)
            elif isinstance(event, h2.events.TrailersReceived):
                result["trailers"] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                data += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, h2.events.StreamReset):
                return {"reset": int(event.error_code)}
            elif isinstance(event, h2.events.StreamEnded):
                result["message"] = data[5:].hex()
                return result
        sock.sendall(conn.data_to_send())


def main():
    addr, authority, path, request_hex = sys.argv[1:5]
    try:
        print(json.dumps(call(addr, authority, path, bytes.fromhex(request_hex))))
    except (OSError, ConnectionError) as e:
        print(f"h2_unary.py: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
