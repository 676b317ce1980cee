//! `benchmarks.svg`: one panel per scenario, each variant's throughput as a bar, redtower in
//! red and baselines in grey, each panel on its own scale (the ratio is printed on the bar).

use std::{collections::BTreeMap, path::Path};

use plotters::prelude::*;

use super::{Row, report};

const WIDTH: u32 = 1120;
const LABEL: i32 = 300;
const BAR_MAX: i32 = 380;
const ROW: i32 = 24;
const TITLE: i32 = 30;
const GAP: i32 = 12;

const OURS: RGBColor = RGBColor(196, 40, 40);
const BASELINE: RGBColor = RGBColor(150, 150, 150);

type Error = String;

fn err(e: impl std::fmt::Display) -> Error {
    format!("chart: {e}")
}

/// Draws the chart of every row that has a throughput.
pub(crate) fn draw(path: &Path, rows: &[Row], subtitle: &str) -> Result<(), Error> {
    let mut order: Vec<&str> = Vec::new();
    let mut groups: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.rate.is_some()) {
        if !groups.contains_key(row.scenario.as_str()) {
            order.push(&row.scenario);
        }
        groups.entry(&row.scenario).or_default().push(row);
    }
    let height = 60
        + groups
            .values()
            .map(|g| TITLE + ROW * g.len() as i32 + GAP)
            .sum::<i32>();
    let root = SVGBackend::new(path, (WIDTH, height as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let text = |size: u32| ("sans-serif", size).into_font().color(&BLACK);
    root.draw(&Text::new(
        "redtower under load: throughput per scenario (bars) next to its baselines (grey)",
        (10, 10),
        text(16),
    ))
    .map_err(err)?;
    root.draw(&Text::new(subtitle.to_owned(), (10, 32), text(12)))
        .map_err(err)?;
    let mut y = 60;
    for scenario in order {
        let group = &groups[scenario];
        root.draw(&Text::new(scenario.to_owned(), (10, y + 8), text(14)))
            .map_err(err)?;
        y += TITLE;
        let max = group
            .iter()
            .filter_map(|r| r.rate)
            .fold(0.0_f64, f64::max)
            .max(1.0);
        for row in group {
            let rate = row.rate.unwrap_or(0.0);
            let len = ((rate / max) * f64::from(BAR_MAX)).round() as i32;
            let color = if row.ours { OURS } else { BASELINE };
            root.draw(&Text::new(row.variant.clone(), (20, y + 4), text(12)))
                .map_err(err)?;
            root.draw(&Rectangle::new(
                [(LABEL, y), (LABEL + len.max(1), y + ROW - 6)],
                color.filled(),
            ))
            .map_err(err)?;
            let mut label = format!("{:.0} {}", rate, row.unit);
            let ratios = report::short_ratios(rows, row);
            if !ratios.is_empty() {
                label.push_str(&format!("  ({ratios})"));
            }
            root.draw(&Text::new(label, (LABEL + len.max(1) + 6, y + 4), text(11)))
                .map_err(err)?;
            y += ROW;
        }
        y += GAP;
    }
    root.present().map_err(err)?;
    Ok(())
}
