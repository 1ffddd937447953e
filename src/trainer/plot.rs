//! `curves.svg`: loss, accuracy and learning rate against the epoch, as a training plot reads:
//! whole-epoch ticks, a marker on every evaluated epoch, the best epoch marked.
use std::path::Path;

use plotters::coord::types::{RangedCoordf64, RangedCoordi32};
use plotters::prelude::*;

use super::{EpochMetrics, TrainError};

/// Draws three panels into an SVG string: loss and accuracy of train and test (test points
/// marked, as evaluation may skip epochs) and the learning rate, against whole epochs. The
/// `best_epoch` (1-based) is marked by a vertical line in the loss and accuracy panels and its
/// test accuracy written beside it.
///
/// # Errors
/// [`TrainError::Plot`] naming `path` (used only in the message) if drawing fails.
pub fn curves_svg(
    metrics: &[EpochMetrics],
    best_epoch: Option<usize>,
    path: &Path,
) -> Result<String, TrainError> {
    let mut svg = String::new();
    draw(metrics, best_epoch, &mut svg).map_err(|message| TrainError::Plot {
        path: path.to_path_buf(),
        message,
    })?;
    Ok(svg)
}

type Series = Vec<(i32, f64)>;
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordi32, RangedCoordf64>>;

fn series(metrics: &[EpochMetrics], f: impl Fn(&EpochMetrics) -> Option<f64>) -> Series {
    metrics
        .iter()
        .filter_map(|m| f(m).filter(|v| v.is_finite()).map(|v| (m.epoch as i32, v)))
        .collect()
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// One panel: its title, its top, and its series (name, points, colour, marked).
struct Panel {
    title: &'static str,
    top: f64,
    lines: Vec<(&'static str, Series, RGBColor, bool)>,
}

fn panels(metrics: &[EpochMetrics]) -> [Panel; 3] {
    let max = |s: &[&Series]| {
        s.iter()
            .flat_map(|s| s.iter())
            .map(|p| p.1)
            .fold(0.0, f64::max)
    };
    let (train_loss, test_loss) = (
        series(metrics, |m| Some(m.train_loss)),
        series(metrics, |m| m.test_loss),
    );
    let lr = series(metrics, |m| Some(m.lr));
    [
        Panel {
            title: "loss",
            top: (max(&[&train_loss, &test_loss]) * 1.05).max(0.1),
            lines: vec![
                ("train", train_loss, BLUE, false),
                ("test", test_loss, RED, true),
            ],
        },
        Panel {
            title: "accuracy (%)",
            top: 100.0,
            lines: vec![
                ("train", series(metrics, |m| Some(m.train_acc)), BLUE, false),
                ("test", series(metrics, |m| m.test_acc), RED, true),
            ],
        },
        Panel {
            title: "learning rate",
            top: (max(&[&lr]) * 1.05).max(1e-12),
            lines: vec![("lr", lr, BLACK, false)],
        },
    ]
}

fn draw(metrics: &[EpochMetrics], best: Option<usize>, out: &mut String) -> Result<(), String> {
    let root = SVGBackend::with_string(out, (1200, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, 3));
    let last = metrics.last().map_or(1, |m| m.epoch).max(2) as i32;
    let best_acc = best.and_then(|b| metrics.iter().find(|m| m.epoch == b)?.test_acc);
    for (area, panel) in areas.iter().zip(panels(metrics)) {
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(1..last, 0.0..panel.top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .x_labels((last as usize).min(10))
            .x_label_formatter(&|x| x.to_string())
            .draw()
            .map_err(err)?;
        for (name, points, color, marked) in panel.lines {
            draw_line(&mut chart, name, points, color, marked)?;
        }
        if let (Some(b), true) = (best, panel.title != "learning rate") {
            let label = best_acc.map_or(format!("best: epoch {b}"), |a| {
                format!("best {a:.2}% (epoch {b})")
            });
            chart
                .draw_series(LineSeries::new(
                    [(b as i32, 0.0), (b as i32, panel.top)],
                    GREEN.stroke_width(1),
                ))
                .map_err(err)?
                .label(label)
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn draw_line(
    chart: &mut Chart<'_, '_>,
    name: &'static str,
    points: Series,
    color: RGBColor,
    marked: bool,
) -> Result<(), String> {
    if marked {
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))
        .map_err(err)?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(epoch: usize, test_acc: Option<f64>) -> EpochMetrics {
        EpochMetrics {
            ema_test_loss: None,
            ema_test_acc: None,
            epoch,
            train_loss: 2.0 / epoch as f64,
            train_acc: 10.0 * epoch as f64,
            test_loss: test_acc.map(|a| 1.0 - a / 100.0),
            test_acc,
            lr: 0.1 / epoch as f64,
            seconds: 1.0,
            train_images: 100,
            train_images_per_sec: 100.0,
        }
    }

    fn svg(metrics: &[EpochMetrics], best: Option<usize>) -> String {
        curves_svg(metrics, best, Path::new("curves.svg")).unwrap()
    }

    #[test]
    fn evaluated_epochs_are_marked_and_the_best_is_named() {
        // Evaluated on epochs 2, 4 and 5 only.
        let metrics: Vec<_> = (1..=5)
            .map(|e| epoch(e, (e % 2 == 0 || e == 5).then_some(40.0 + e as f64)))
            .collect();
        let out = svg(&metrics, Some(5));
        // One marker per evaluated epoch in the loss and the accuracy panels.
        assert_eq!(out.matches("<circle").count(), 2 * 3, "{out}");
        assert!(out.contains("best 45.00% (epoch 5)"), "{out}");
        assert!(out.contains("learning rate"));
        // Whole-epoch ticks only: 1 to 5, and no fraction of an epoch.
        let texts = texts(&out);
        for tick in ["1", "2", "3", "4", "5"] {
            assert!(texts.iter().any(|t| t == tick), "tick {tick}: {texts:?}");
        }
        for tick in ["1.5", "2.5", "3.5", "4.5"] {
            assert!(!texts.iter().any(|t| t == tick), "tick {tick}: {texts:?}");
        }
    }

    /// The text elements of an SVG, trimmed.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = t.split_once('>')?.1;
                Some(body.split_once("</text>")?.0.trim().to_string())
            })
            .collect()
    }

    #[test]
    fn no_best_epoch_draws_no_best_marker() {
        let out = svg(&[epoch(1, None)], None);
        assert!(!out.contains("best"), "{out}");
        assert_eq!(out.matches("<circle").count(), 0);
    }
}
