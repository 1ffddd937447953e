//! `curves.svg`: training and test loss and accuracy against the epoch.
use std::path::Path;

use plotters::prelude::*;

use super::{EpochMetrics, TrainError};

/// Draws loss (left panel) and accuracy (right panel) of train and test against the epoch into
/// an SVG string.
///
/// # Errors
/// [`TrainError::Plot`] naming `path` (used only in the message) if drawing fails.
pub fn curves_svg(metrics: &[EpochMetrics], path: &Path) -> Result<String, TrainError> {
    let mut svg = String::new();
    draw(metrics, &mut svg).map_err(|message| TrainError::Plot {
        path: path.to_path_buf(),
        message,
    })?;
    Ok(svg)
}

type Series = Vec<(f64, f64)>;

fn series(metrics: &[EpochMetrics], f: impl Fn(&EpochMetrics) -> Option<f64>) -> Series {
    metrics
        .iter()
        .filter_map(|m| f(m).filter(|v| v.is_finite()).map(|v| (m.epoch as f64, v)))
        .collect()
}

fn draw(metrics: &[EpochMetrics], out: &mut String) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let root = SVGBackend::with_string(out, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(500);
    let last = metrics.last().map_or(1, |m| m.epoch).max(2) as f64;
    let panels = [
        (
            left,
            "loss",
            series(metrics, |m| Some(m.train_loss)),
            series(metrics, |m| m.test_loss),
        ),
        (
            right,
            "accuracy (%)",
            series(metrics, |m| Some(m.train_acc)),
            series(metrics, |m| m.test_acc),
        ),
    ];
    for (area, label, train, test) in panels {
        let top = train
            .iter()
            .chain(&test)
            .map(|p| p.1)
            .fold(0.0f64, f64::max);
        let top = if label == "loss" {
            (top * 1.05).max(0.1)
        } else {
            100.0
        };
        let mut chart = ChartBuilder::on(&area)
            .caption(label, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(1.0..last, 0.0..top)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(label)
            .draw()
            .map_err(|e| err(&e))?;
        for (name, points, color) in [("train", train, BLUE), ("test", test, RED)] {
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
