//! The evaluation picture (SVG, plotters): ROC curves of the combined score and each model,
//! the PR curve of the combined score, and histograms of combined scores for benign and attack
//! flows with the alert threshold.

use std::path::Path;

use plotters::prelude::*;

use super::{EvalReport, metrics::thin};

const BENIGN: RGBColor = RGBColor(40, 110, 200);
const ATTACK: RGBColor = RGBColor(210, 60, 40);
const MODELS: [(&str, RGBColor); 3] =
    [("combined", RGBColor(20, 20, 20)), ("iforest", RGBColor(60, 150, 60)), ("autoencoder", RGBColor(150, 80, 190))];

fn err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Writes the picture.
///
/// # Errors
/// A plotting or I/O failure.
pub fn write_svg(path: &Path, report: &EvalReport) -> std::io::Result<()> {
    let root = SVGBackend::new(path, (1500, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(&report.name, ("sans-serif", 20)).map_err(err)?;
    let panels = root.split_evenly((1, 3));

    let mut roc = ChartBuilder::on(&panels[0])
        .caption("ROC", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(err)?;
    roc.configure_mesh().x_desc("false positive rate").y_desc("true positive rate").draw().map_err(err)?;
    roc.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3))).map_err(err)?;
    for (model, color) in MODELS {
        if let (Some(c), Some(a)) = (report.all_curves.get(model), report.areas.get(model)) {
            roc.draw_series(LineSeries::new(thin(&c.roc, 2000), color.stroke_width(2)))
                .map_err(err)?
                .label(format!("{model} AUC {:.3}", a.roc_auc))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        }
    }
    roc.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;

    let mut pr = ChartBuilder::on(&panels[1])
        .caption("precision-recall (combined)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)
        .map_err(err)?;
    pr.configure_mesh().x_desc("recall").y_desc("precision").draw().map_err(err)?;
    if let Some(c) = report.all_curves.get("combined") {
        let ap = report.areas.get("combined").map_or(0.0, |a| a.pr_auc);
        pr.draw_series(LineSeries::new(thin(&c.pr, 2000), MODELS[0].1.stroke_width(2)))
            .map_err(err)?
            .label(format!("AP {ap:.3}"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], MODELS[0].1.stroke_width(2)));
    }
    pr.configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;

    draw_histogram(&panels[2], report)?;
    root.present().map_err(err)
}

#[expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "bin arithmetic"
)]
fn draw_histogram<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    report: &EvalReport,
) -> std::io::Result<()>
where
    DB::ErrorType: 'static,
{
    const BINS: usize = 60;
    let threshold = f64::from(report.at_threshold.threshold);
    let values: Vec<f64> = report.scores.iter().map(|&(s, _)| f64::from(s)).filter(|s| s.is_finite()).collect();
    // Clip the range to the bulk of the data so one extreme score does not squash the rest.
    let mut sorted = values.clone();
    sorted.sort_by(f64::total_cmp);
    let pick = |q: f64| sorted.get(((sorted.len().saturating_sub(1)) as f64 * q) as usize).copied().unwrap_or(0.0);
    let lo = pick(0.001).min(threshold) - 0.5;
    let hi = pick(0.995).max(threshold) + 0.5;
    let width = (hi - lo) / BINS as f64;
    let mut benign = [0u64; BINS];
    let mut attack = [0u64; BINS];
    for &(s, is_attack) in &report.scores {
        let bin = (((f64::from(s) - lo) / width).floor().max(0.0) as usize).min(BINS - 1);
        if is_attack { attack[bin] += 1 } else { benign[bin] += 1 }
    }
    // Shares within each class, so a small benign set is as visible as a large attack set.
    let share = |h: &[u64; BINS]| {
        let total = h.iter().sum::<u64>().max(1) as f64;
        h.map(|c| c as f64 / total)
    };
    let (benign, attack) = (share(&benign), share(&attack));
    let top = benign.iter().chain(&attack).copied().fold(0.0, f64::max) * 1.1 + 1e-9;
    let mut chart = ChartBuilder::on(area)
        .caption("combined score by class", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(lo..hi, 0f64..top)
        .map_err(err)?;
    chart.configure_mesh().x_desc("combined score").y_desc("share of class").draw().map_err(err)?;
    for (h, color, name) in [(benign, BENIGN, "benign"), (attack, ATTACK, "attack")] {
        chart
            .draw_series(h.iter().enumerate().map(|(i, &v)| {
                let x0 = lo + width * i as f64;
                Rectangle::new([(x0, 0.0), (x0 + width, v)], color.mix(0.45).filled())
            }))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.mix(0.45).filled()));
    }
    chart
        .draw_series(LineSeries::new([(threshold, 0.0), (threshold, top)], BLACK.stroke_width(2)))
        .map_err(err)?
        .label(format!("alert threshold {threshold:.2}"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The supervised evaluation's picture: the confusion matrix, each row shaded by the share of
/// its true class predicted in each column (so a small class reads as clearly as a large one),
/// with the counts written in, and each class's F1 beside its name.
///
/// # Errors
/// A plotting or I/O failure.
#[expect(clippy::cast_precision_loss, reason = "counts of rows, far below 2^52")]
pub fn write_confusion_svg(path: &Path, report: &super::supervised::SupervisedReport) -> std::io::Result<()> {
    let k = report.classes.len();
    let (left, top, cell) = (260i32, 200i32, 44i32);
    let matrix = i32::try_from(k).map_err(err)? * cell;
    let picture = (u32::try_from(left + matrix + 40).map_err(err)?, u32::try_from(top + matrix + 60).map_err(err)?);
    let root = SVGBackend::new(path, picture).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let title = format!("{} — {}", report.source, report.split_name());
    root.draw(&Text::new(title, (10, 10), ("sans-serif", 15))).map_err(err)?;
    root.draw(&Text::new(
        format!(
            "accuracy {:.3}, macro F1 {:.3}; rows: true class (F1), columns: predicted; shade: share of the row",
            report.accuracy, report.macro_f1
        ),
        (10, 32),
        ("sans-serif", 12),
    ))
    .map_err(err)?;
    let rotated = ("sans-serif", 12).into_font().transform(FontTransform::Rotate270);
    for (c, class) in report.classes.iter().enumerate() {
        let offset = i32::try_from(c).map_err(err)? * cell;
        root.draw(&Text::new(
            format!("{} ({:.2})", class.class, class.f1),
            (10, top + offset + cell / 2 - 6),
            ("sans-serif", 12),
        ))
        .map_err(err)?;
        root.draw(&Text::new(class.class.clone(), (left + offset + cell / 2 - 6, top - 8), rotated.clone()))
            .map_err(err)?;
    }
    for (r, row) in report.confusion.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (c, &n) in row.iter().enumerate() {
            let share = if total == 0 { 0.0 } else { n as f64 / total as f64 };
            let (x, y) = (left + i32::try_from(c).map_err(err)? * cell, top + i32::try_from(r).map_err(err)? * cell);
            let color = if r == c { BENIGN } else { ATTACK };
            root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], color.mix(0.08 + 0.92 * share).filled()))
                .map_err(err)?;
            root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], BLACK.mix(0.2))).map_err(err)?;
            if n > 0 {
                let ink = if share > 0.5 { WHITE } else { BLACK };
                let label = if n >= 10_000 { format!("{}k", n / 1000) } else { n.to_string() };
                root.draw(&Text::new(label, (x + 4, y + cell / 2 - 6), ("sans-serif", 11).into_font().color(&ink)))
                    .map_err(err)?;
            }
        }
    }
    root.present().map_err(err)
}
