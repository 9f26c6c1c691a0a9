//! The figures of `cargo xtask soak` (see `soak.rs`): the samples as CSV, the PNG plot, and
//! the growth verdict against the stated bounds. Pure functions of the samples, so that they
//! are unit-tested without a cluster.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// RSS may grow at most this much (percent) after the warm-up: the highest RSS of a node
/// after the warm-up against its highest RSS during it.
pub(crate) const RSS_GROWTH_MAX_PCT: u64 = 30;
/// Open file descriptors may grow at most by this many after the warm-up (highest after
/// against highest during).
pub(crate) const FD_GROWTH_MAX: u64 = 16;
/// Disk use of a node's data directory may grow at most this much (percent) after the
/// warm-up, plus [`DISK_GROWTH_SLACK`] (redb grows its files in steps).
pub(crate) const DISK_GROWTH_MAX_PCT: u64 = 50;
/// Added to the disk bound: a redb growth step. It was 16 MiB, larger than the whole store
/// of a soak whose warm-up never reached its ceilings; with the bulk writer the store levels
/// off at about 17 MiB within the warm-up (release build), and a snapshot file beside
/// another adds about 3 MiB for a moment.
pub(crate) const DISK_GROWTH_SLACK: u64 = 4 << 20;

/// The CSV header; one row per node per sample.
pub(crate) const CSV_HEADER: &str = "t_secs,node,pid,rss_kib,fds,disk_bytes";

/// One sample of one node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    /// Seconds since the load started.
    pub(crate) t_secs: f64,
    pub(crate) node: String,
    pub(crate) pid: u32,
    /// `VmRSS` of `/proc/PID/status`, KiB.
    pub(crate) rss_kib: u64,
    /// Entries of `/proc/PID/fd`.
    pub(crate) fds: u64,
    /// Bytes allocated to the files under the node's data directory (`st_blocks` × 512).
    pub(crate) disk_bytes: u64,
}

/// The samples as CSV text, with [`CSV_HEADER`].
pub(crate) fn csv(samples: &[Sample]) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for s in samples {
        let _ = writeln!(out, "{:.1},{},{},{},{},{}", s.t_secs, s.node, s.pid, s.rss_kib, s.fds, s.disk_bytes);
    }
    out
}

/// Parses [`csv`]'s output back (for tests and for checking a written file).
pub(crate) fn parse_csv(text: &str) -> Result<Vec<Sample>> {
    let mut lines = text.lines();
    if lines.next() != Some(CSV_HEADER) {
        bail!("the CSV does not start with the header {CSV_HEADER:?}");
    }
    lines
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.split(',').collect();
            let [t, node, pid, rss, fds, disk] = f[..] else {
                bail!("line {}: {} fields, expected 6: {line:?}", i + 2, f.len());
            };
            let bad = |what: &str| format!("line {}: bad {what} in {line:?}", i + 2);
            Ok(Sample {
                t_secs: t.parse().with_context(|| bad("t_secs"))?,
                node: node.to_string(),
                pid: pid.parse().with_context(|| bad("pid"))?,
                rss_kib: rss.parse().with_context(|| bad("rss_kib"))?,
                fds: fds.parse().with_context(|| bad("fds"))?,
                disk_bytes: disk.parse().with_context(|| bad("disk_bytes"))?,
            })
        })
        .collect()
}

/// Line colours of the nodes, in order (the plot has no text: see [`plot`]).
pub(crate) const NODE_COLOURS: [(&str, (u8, u8, u8)); 3] =
    [("red", (220, 40, 40)), ("blue", (40, 80, 220)), ("green", (30, 160, 60))];

/// Draws three panels, top to bottom: RSS, open fds, disk use; one line per node (colours
/// [`NODE_COLOURS`] in the order of `nodes`), x from 0 to the last sample, y from 0 to 110 %
/// of the panel's highest value; grey vertical lines mark the faults (`fault_times`, seconds)
/// and a dashed one the end of the warm-up. No text: plotters' text needs a font backend
/// (font-kit and system fonts, or a bundled font), which this command does without; the
/// summary printed with the plot gives the scales.
pub(crate) fn plot(path: &Path, samples: &[Sample], nodes: &[String], fault_times: &[f64], warmup: f64) -> Result<()> {
    let mut pixels = vec![0_u8; (PLOT_SIZE.0 * PLOT_SIZE.1 * 3) as usize];
    draw(&mut pixels, samples, nodes, fault_times, warmup)?;
    write_png(path, &pixels, PLOT_SIZE).with_context(|| format!("writing the plot {}", path.display()))
}

/// [`plot`]'s drawing, into RGB `pixels` of [`PLOT_SIZE`].
fn draw(pixels: &mut [u8], samples: &[Sample], nodes: &[String], fault_times: &[f64], warmup: f64) -> Result<()> {
    use plotters::prelude::*;

    let t_max = samples.iter().map(|s| s.t_secs).fold(1.0_f64, f64::max);
    let root = BitMapBackend::with_buffer(pixels, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    let panels = root.split_evenly((3, 1));
    let metrics: [fn(&Sample) -> f64; 3] = [|s| s.rss_kib as f64, |s| s.fds as f64, |s| s.disk_bytes as f64];
    for (panel, metric) in panels.iter().zip(metrics) {
        let y_max = samples.iter().map(metric).fold(1.0_f64, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .margin(12)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        let grey = RGBColor(200, 200, 200);
        let frame = [(0.0, 0.0), (t_max, 0.0), (t_max, y_max), (0.0, y_max), (0.0, 0.0)];
        chart.draw_series(LineSeries::new(frame, BLACK)).map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        for &t in fault_times {
            chart
                .draw_series(LineSeries::new([(t, 0.0), (t, y_max)], grey))
                .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        }
        if warmup < t_max {
            // Dashed: short segments.
            let dashes = (0..20).map(|i| {
                let y0 = y_max * f64::from(i) / 20.0;
                PathElement::new([(warmup, y0), (warmup, y0 + y_max / 40.0)], BLACK)
            });
            chart.draw_series(dashes).map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        }
        for (node, (_, (r, g, b))) in nodes.iter().zip(NODE_COLOURS) {
            let points: Vec<(f64, f64)> =
                samples.iter().filter(|s| &s.node == node).map(|s| (s.t_secs, metric(s))).collect();
            let style = RGBColor(r, g, b).stroke_width(2);
            chart.draw_series(LineSeries::new(points, style)).map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        }
    }
    root.present().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    Ok(())
}

/// The plot's width and height, pixels.
pub(crate) const PLOT_SIZE: (u32, u32) = (1200, 900);

/// Encodes RGB `pixels` of `size` as a PNG file at `path` (the `png` crate: plotters' own
/// encoder would bring the whole `image` crate).
fn write_png(path: &Path, pixels: &[u8], size: (u32, u32)) -> Result<()> {
    let file = std::fs::File::create(path)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), size.0, size.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(())
}

/// Whether `bytes` are a valid PNG file (decoded in full); its width and height.
pub(crate) fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().ok()?;
    let mut buf = vec![0; reader.output_buffer_size()?];
    let frame = reader.next_frame(&mut buf).ok()?;
    Some((frame.width, frame.height))
}

/// One node's figures over the run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeFigures {
    pub(crate) node: String,
    /// First, last and highest sample: RSS (KiB), fds, disk (bytes).
    pub(crate) rss: [u64; 3],
    pub(crate) fds: [u64; 3],
    pub(crate) disk: [u64; 3],
    /// Highest during the warm-up, highest after: RSS, fds, disk.
    pub(crate) warm_peak: [u64; 3],
    pub(crate) after_peak: [u64; 3],
}

/// The verdict: each node's figures, and every bound exceeded (empty: within bounds).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verdict {
    pub(crate) nodes: Vec<NodeFigures>,
    pub(crate) exceeded: Vec<String>,
}

/// Compares each node's highest figures after `warmup` seconds with its highest during the
/// warm-up, against [`RSS_GROWTH_MAX_PCT`], [`FD_GROWTH_MAX`], [`DISK_GROWTH_MAX_PCT`] +
/// [`DISK_GROWTH_SLACK`]. A node without samples on both sides of the warm-up is an
/// exceeded bound too (nothing could be judged).
pub(crate) fn verdict(samples: &[Sample], nodes: &[String], warmup: f64) -> Verdict {
    let mut out = Verdict { nodes: Vec::new(), exceeded: Vec::new() };
    for node in nodes {
        let mine: Vec<&Sample> = samples.iter().filter(|s| &s.node == node).collect();
        let (warm, after): (Vec<&Sample>, Vec<&Sample>) = mine.iter().partition(|s| s.t_secs <= warmup);
        let (Some(first), Some(last)) = (mine.first(), mine.last()) else {
            out.exceeded.push(format!("{node}: no samples"));
            continue;
        };
        if warm.is_empty() || after.is_empty() {
            out.exceeded.push(format!(
                "{node}: {} samples during the warm-up of {warmup:.0}s and {} after: nothing to compare",
                warm.len(),
                after.len()
            ));
            continue;
        }
        let peak = |xs: &[&Sample], f: fn(&Sample) -> u64| xs.iter().map(|s| f(s)).max().unwrap_or(0);
        let fields: [fn(&Sample) -> u64; 3] = [|s| s.rss_kib, |s| s.fds, |s| s.disk_bytes];
        let tri = |f: fn(&Sample) -> u64| [f(first), f(last), peak(&mine, f)];
        let fig = NodeFigures {
            node: node.clone(),
            rss: tri(fields[0]),
            fds: tri(fields[1]),
            disk: tri(fields[2]),
            warm_peak: fields.map(|f| peak(&warm, f)),
            after_peak: fields.map(|f| peak(&after, f)),
        };
        let [rss_w, fds_w, disk_w] = fig.warm_peak;
        let [rss_a, fds_a, disk_a] = fig.after_peak;
        let growth_pct = |w: u64, a: u64| (a as f64 / (w.max(1) as f64) - 1.0) * 100.0;
        if rss_a * 100 > rss_w * (100 + RSS_GROWTH_MAX_PCT) {
            out.exceeded.push(format!(
                "{node}: RSS grew {:.1} % after the warm-up ({rss_w} KiB -> {rss_a} KiB; bound {RSS_GROWTH_MAX_PCT} %)",
                growth_pct(rss_w, rss_a)
            ));
        }
        if fds_a > fds_w + FD_GROWTH_MAX {
            out.exceeded.push(format!(
                "{node}: open fds grew by {} after the warm-up ({fds_w} -> {fds_a}; bound +{FD_GROWTH_MAX})",
                fds_a - fds_w
            ));
        }
        let disk_bound = disk_w * (100 + DISK_GROWTH_MAX_PCT) / 100 + DISK_GROWTH_SLACK;
        if disk_a > disk_bound {
            out.exceeded.push(format!(
                "{node}: disk use grew {:.1} % after the warm-up ({disk_w} -> {disk_a} bytes; bound {DISK_GROWTH_MAX_PCT} % + {} MiB)",
                growth_pct(disk_w, disk_a),
                DISK_GROWTH_SLACK >> 20
            ));
        }
        out.nodes.push(fig);
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// The verdict's table, as printed at the end of a run.
pub(crate) fn summary_table(v: &Verdict) -> String {
    let mut out = String::from(
        "node   | RSS first / last / max (MiB) | warm-up peak -> after | fds first / last / max | warm-up peak -> after | disk first / last / max (MiB) | warm-up peak -> after\n",
    );
    for n in &v.nodes {
        let m = |kib: u64| kib as f64 / 1024.0;
        let _ = writeln!(
            out,
            "{:<6} | {:.1} / {:.1} / {:.1} | {:.1} -> {:.1} | {} / {} / {} | {} -> {} | {} / {} / {} | {} -> {}",
            n.node,
            m(n.rss[0]),
            m(n.rss[1]),
            m(n.rss[2]),
            m(n.warm_peak[0]),
            m(n.after_peak[0]),
            n.fds[0],
            n.fds[1],
            n.fds[2],
            n.warm_peak[1],
            n.after_peak[1],
            mib(n.disk[0]),
            mib(n.disk[1]),
            mib(n.disk[2]),
            mib(n.warm_peak[2]),
            mib(n.after_peak[2]),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(node: &str, points: &[(f64, u64, u64, u64)]) -> Vec<Sample> {
        points
            .iter()
            .map(|&(t, rss, fds, disk)| Sample {
                t_secs: t,
                node: node.into(),
                pid: 7,
                rss_kib: rss,
                fds,
                disk_bytes: disk,
            })
            .collect()
    }

    fn flat(node: &str) -> Vec<Sample> {
        (0_u32..20)
            .map(|i| (f64::from(i) * 10.0, 50_000 + u64::from(i % 3) * 100, 40, 8 << 20))
            .map(|p| series(node, &[p]).remove(0))
            .collect()
    }

    #[test]
    fn csv_round_trips_and_rejects_a_bad_row() {
        let samples = flat("nodeA");
        let text = csv(&samples);
        assert!(text.starts_with("t_secs,node,pid,rss_kib,fds,disk_bytes\n"));
        assert_eq!(text.lines().count(), 21);
        assert_eq!(parse_csv(&text).expect("should succeed"), samples);
        let err = parse_csv(&format!("{text}1.0,nodeA,7,x,40,1\n")).expect_err("should fail");
        assert!(format!("{err:#}").contains("line 22: bad rss_kib"), "{err:#}");
        assert!(parse_csv("t,node\n").is_err());
    }

    #[test]
    fn flat_figures_are_within_bounds() {
        let nodes = vec!["nodeA".to_string(), "nodeB".to_string()];
        let samples: Vec<Sample> = [flat("nodeA"), flat("nodeB")].concat();
        let v = verdict(&samples, &nodes, 50.0);
        assert!(v.exceeded.is_empty(), "{:?}", v.exceeded);
        assert_eq!(v.nodes.len(), 2);
        assert_eq!(v.nodes[0].rss, [50_000, 50_100, 50_200]);
        assert_eq!(v.nodes[0].fds, [40, 40, 40]);
        assert!(summary_table(&v).contains("nodeA"));
    }

    #[test]
    fn growth_past_each_bound_is_reported_and_at_the_bound_is_not() {
        let nodes = vec!["n".to_string()];
        // At the bounds exactly: RSS +30 %, fds +16, disk +50 % + DISK_GROWTH_SLACK.
        let at = series("n", &[(0.0, 100_000, 40, 32 << 20), (100.0, 130_000, 56, (48 << 20) + DISK_GROWTH_SLACK)]);
        assert!(verdict(&at, &nodes, 50.0).exceeded.is_empty(), "{:?}", verdict(&at, &nodes, 50.0).exceeded);
        // Past each: one message per figure.
        let past =
            series("n", &[(0.0, 100_000, 40, 32 << 20), (100.0, 131_000, 57, (48 << 20) + DISK_GROWTH_SLACK + 1)]);
        let v = verdict(&past, &nodes, 50.0);
        assert_eq!(v.exceeded.len(), 3, "{:?}", v.exceeded);
        assert!(v.exceeded[0].contains("RSS grew 31.0 %"), "{}", v.exceeded[0]);
        assert!(v.exceeded[1].contains("open fds grew by 17"), "{}", v.exceeded[1]);
        assert!(v.exceeded[2].contains("disk use grew"), "{}", v.exceeded[2]);
    }

    #[test]
    fn a_run_without_samples_after_the_warm_up_cannot_pass() {
        let nodes = vec!["n".to_string(), "missing".to_string()];
        let v = verdict(&flat("n"), &nodes, 1_000.0);
        assert_eq!(v.exceeded.len(), 2, "{:?}", v.exceeded);
        assert!(v.exceeded[0].contains("nothing to compare"));
        assert!(v.exceeded[1].contains("missing: no samples"));
    }

    #[test]
    fn the_plot_is_a_png_of_the_stated_size() {
        let dir = std::env::temp_dir().join(format!("xtask-soak-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("should succeed");
        let path = dir.join("soak.png");
        let nodes: Vec<String> = ["nodeA", "nodeB", "nodeC"].map(String::from).to_vec();
        let samples: Vec<Sample> = nodes.iter().flat_map(|n| flat(n)).collect();
        plot(&path, &samples, &nodes, &[30.0, 60.0], 50.0).expect("should succeed");
        let bytes = std::fs::read(&path).expect("should succeed");
        assert_eq!(png_size(&bytes), Some((1200, 900)));
        assert_eq!(png_size(b"GIF89a............................"), None);
        assert_eq!(png_size(&bytes[..bytes.len() / 2]), None, "a truncated PNG");
        std::fs::remove_dir_all(&dir).expect("should succeed");
    }
}
