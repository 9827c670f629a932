//! The PNG plot: throughput against write size for the three transports,
//! blocking mode beside busy-poll mode (plotters' bitmap backend; text is
//! drawn with a TrueType font found on the machine, no system libraries).

use std::path::Path;

use anyhow::{bail, Context};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// One line: a label and (write size, GB/s) points.
pub type Series = (String, Vec<(f64, f64)>);

/// Fonts tried in order ($HVSOCK_FONT first).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

fn register_font() -> anyhow::Result<()> {
    let env = std::env::var("HVSOCK_FONT").ok();
    for path in env.iter().map(String::as_str).chain(FONTS.iter().copied()) {
        if let Ok(bytes) = std::fs::read(path) {
            // The font must live as long as the process: leak it once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    bail!(
        "no TrueType font found for the plot's text (install fonts-dejavu-core, \
         or point HVSOCK_FONT at a .ttf file)"
    )
}

fn size_label(bytes: f64) -> String {
    let b = bytes.round() as u64;
    match b {
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// Draws `panels` (a title and its lines each) side by side into `path`.
pub fn draw(path: &Path, title: &str, panels: &[(String, Vec<Series>)]) -> anyhow::Result<()> {
    register_font()?;
    let width = 640 * panels.len().max(1) as u32;
    let root = BitMapBackend::new(path, (width, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    let palette = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0x17, 0xbe, 0xcf),
        RGBColor(0x9e, 0xda, 0xe5),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x7f, 0x7f, 0x7f),
    ];
    for ((name, series), area) in panels.iter().zip(areas.iter()) {
        // x is log2 of the write size, so that the measured sizes are
        // evenly spread and each gets its own label.
        let mut sizes: Vec<f64> = series
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|p| p.0.log2()))
            .collect();
        sizes.sort_by(f64::total_cmp);
        sizes.dedup();
        let ymax = series
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
            .filter(|y| y.is_finite())
            .fold(0f64, f64::max);
        let (Some(&xmin), Some(&xmax)) = (sizes.first(), sizes.last()) else {
            continue;
        };
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d((xmin - 1.0)..(xmax + 1.0), 0f64..(ymax * 1.15).max(0.01))?;
        let ticks = ((xmax - xmin + 2.0) * 2.0) as usize + 1;
        chart
            .configure_mesh()
            .x_desc("write size (log scale)")
            .y_desc("GB/s")
            .x_labels(ticks)
            .x_label_formatter(&|x| {
                if sizes.iter().any(|s| (s - x).abs() < 0.01) {
                    size_label(x.exp2())
                } else {
                    String::new()
                }
            })
            .disable_x_mesh()
            .label_style(("sans-serif", 13))
            .draw()?;
        for (i, (label, pts)) in series.iter().enumerate() {
            let color = palette[i % palette.len()];
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|&(x, y)| (x.log2(), y)),
                    color.stroke_width(2),
                ))?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(
                pts.iter()
                    .map(|&(x, y)| Circle::new((x.log2(), y), 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
