//! The benchmarks' results as SVG charts (`lb bench xdp --svg DIR`, `lb bench l7 --svg DIR`):
//! grouped bars, one group per case, one bar per system, each bar the median of the rounds with
//! a whisker from their minimum to their maximum, as the tables print them.

use std::path::Path;

use plotters::prelude::*;

use super::{BenchError, Spread};

/// One group of bars: its label and each system's figures.
#[derive(Debug)]
pub struct Group<'a> {
    pub label: &'a str,
    pub bars: Vec<Option<Spread>>,
}

/// A chart of groups of bars, one colour per series.
#[derive(Debug)]
pub struct Bars<'a> {
    pub title: &'a str,
    pub unit: &'a str,
    /// The series' names, in the groups' bar order.
    pub series: &'a [&'a str],
    pub groups: Vec<Group<'a>>,
}

/// The series' colours: lb's first (blue), then the references (grey, orange, green).
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 99, 173),
    RGBColor(120, 128, 136),
    RGBColor(214, 120, 30),
    RGBColor(46, 140, 87),
];

impl Bars<'_> {
    /// Writes the chart to `path` (SVG, 420 high; 900 wide, or 210 a group if that is wider:
    /// the groups' labels are not wrapped).
    pub fn write(&self, path: &Path) -> Result<(), BenchError> {
        self.draw(path).map_err(|error| BenchError::Io {
            what: format!("drawing {}", path.display()),
            source: std::io::Error::other(error.to_string()),
        })
    }

    fn draw(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let top = self
            .groups
            .iter()
            .flat_map(|g| g.bars.iter().flatten())
            .map(|s| s.max)
            .filter(|v| v.is_finite())
            .fold(0.0_f64, f64::max)
            .max(f64::MIN_POSITIVE)
            * 1.1;
        let groups = self.groups.len().max(1);
        let width = u32::try_from(groups * 210).unwrap_or(u32::MAX).max(900);
        let root = SVGBackend::new(path, (width, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let labels: Vec<&str> = self.groups.iter().map(|g| g.label).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..groups as f64, 0.0..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups * 2 + 1)
            .x_label_formatter(&|x| group_label(&labels, *x))
            .y_desc(self.unit)
            .y_label_formatter(&|v| {
                // Whole numbers, but for small ranges (Mpps, ms).
                if top < 20.0 {
                    format!("{v:.1}")
                } else {
                    format!("{v:.0}")
                }
            })
            .light_line_style(WHITE)
            .label_style(("sans-serif", 13))
            .draw()?;
        let series = self.series.len().max(1) as f64;
        let width = 0.8 / series;
        for (s, name) in self.series.iter().enumerate() {
            let colour = COLOURS[s % COLOURS.len()];
            let bars: Vec<(f64, Spread)> = self
                .groups
                .iter()
                .enumerate()
                .filter_map(|(g, group)| {
                    let left = g as f64 + 0.1 + s as f64 * width;
                    group
                        .bars
                        .get(s)
                        .copied()
                        .flatten()
                        .map(|spread| (left, spread))
                })
                .collect();
            chart
                .draw_series(bars.iter().map(|(left, spread)| {
                    Rectangle::new(
                        [(*left, 0.0), (left + width * 0.9, spread.median)],
                        colour.filled(),
                    )
                }))?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
            chart.draw_series(bars.iter().map(|(left, spread)| {
                let middle = left + width * 0.45;
                PathElement::new(
                    vec![(middle, spread.min), (middle, spread.max)],
                    BLACK.stroke_width(1),
                )
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 13))
            .draw()?;
        root.present()?;
        Ok(())
    }
}

/// The label of the group whose middle is at `x` (groups are 1 wide, from 0), else nothing.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "x is a tick of 0..groups; its floor indexes a group"
)]
fn group_label(labels: &[&str], x: f64) -> String {
    let i = x.floor();
    if i >= 0.0 && (x - i - 0.5).abs() < 1e-6 {
        labels.get(i as usize).copied().unwrap_or("").to_owned()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_with_its_title_labels_and_a_bar_per_figure() {
        let dir = std::env::temp_dir().join(format!("lb-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.svg");
        let spread = |median: f64| Spread {
            median,
            min: median * 0.9,
            max: median * 1.1,
        };
        Bars {
            title: "requests per second",
            unit: "req/s",
            series: &["lb", "HAProxy"],
            groups: vec![
                Group {
                    label: "offload",
                    bars: vec![Some(spread(19_000.0)), Some(spread(20_000.0))],
                },
                Group {
                    label: "bridging",
                    bars: vec![Some(spread(17_000.0)), None],
                },
            ],
        }
        .write(&path)
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for text in [
            "requests per second",
            "offload",
            "bridging",
            "lb",
            "HAProxy",
            "req/s",
        ] {
            assert!(svg.contains(text), "no {text:?} in the chart");
        }
        // Three bars (the missing figure has none) and the legend's two swatches.
        let blue = svg.matches("#1F63AD").count();
        let grey = svg.matches("#788088").count();
        assert_eq!((blue, grey), (3, 2), "{svg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
