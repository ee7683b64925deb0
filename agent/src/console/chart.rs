//! Charts drawn as SVG on the server: no script, no inline style (the stylesheet colours them
//! through classes), a tooltip (`<title>`) on every column so a pointer reads the numbers.

use maud::{Markup, html};

/// Colour classes for series, in order (`c0`.. in console.css); the rest is `other`.
pub const SERIES_CLASSES: [&str; 6] = ["c0", "c1", "c2", "c3", "c4", "c5"];

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 64.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;

/// One stacked series: its label and a value per bucket.
pub struct Stack<'a> {
    pub label: String,
    pub values: &'a [u64],
}

/// Bytes the way people read them (SI: kB, MB, GB).
#[must_use]
pub fn bytes(v: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    #[expect(clippy::cast_precision_loss, reason = "a label")]
    let mut x = v as f64;
    let mut unit = 0;
    while x >= 1000.0 && unit + 1 < UNITS.len() {
        x /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{v} B") } else { format!("{x:.1} {}", UNITS[unit]) }
}

/// The smallest 1, 2 or 5 times a power of ten that is at least `max / 4`: four gridlines.
fn tick_step(max: u64) -> u64 {
    let target = max.div_ceil(4).max(1);
    let mut power = 1u64;
    loop {
        for m in [1, 2, 5] {
            let step = power.saturating_mul(m);
            if step >= target {
                return step;
            }
        }
        power = power.saturating_mul(10);
    }
}

/// `HH:MM` (UTC) of a Unix minute.
fn clock(minute: i64) -> String {
    let m = minute.rem_euclid(24 * 60);
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// The non-zero segments of bucket `b`, bottom up: which stack (`None`: the rest), its value,
/// and what lies below it.
fn segments(stacks: &[Stack<'_>], other: &[u64], b: usize) -> Vec<(Option<usize>, u64, u64)> {
    let values = stacks.iter().enumerate().map(|(i, s)| (Some(i), s.values.get(b).copied().unwrap_or(0)));
    let mut out = Vec::new();
    let mut below = 0;
    for (which, v) in values.chain(std::iter::once((None, other.get(b).copied().unwrap_or(0)))) {
        if v > 0 {
            out.push((which, v, below));
            below += v;
        }
    }
    out
}

fn class(which: Option<usize>) -> &'static str {
    which.map_or("other", |i| SERIES_CLASSES[i % SERIES_CLASSES.len()])
}

/// Stacked columns, one per bucket of `step_minutes` from `start_minute`: the stacks in
/// order from the bottom, then `other` (grey) on top.
#[must_use]
#[expect(clippy::cast_precision_loss, reason = "pixel positions")]
pub fn stacked_columns(
    label: &str,
    stacks: &[Stack<'_>],
    other: &[u64],
    start_minute: i64,
    step_minutes: i64,
) -> Markup {
    let buckets = other.len().max(stacks.iter().map(|s| s.values.len()).max().unwrap_or(0));
    let total = |b: usize| {
        stacks.iter().map(|s| s.values.get(b).copied().unwrap_or(0)).sum::<u64>() + other.get(b).copied().unwrap_or(0)
    };
    let max = (0..buckets).map(total).max().unwrap_or(0);
    let step = tick_step(max);
    let top = step * max.div_ceil(step).max(1);
    let plot_w = WIDTH - LEFT - 4.0;
    let plot_h = HEIGHT - BOTTOM - TOP;
    let column = plot_w / buckets.max(1) as f64;
    let y_of = |v: u64| TOP + plot_h * (1.0 - v as f64 / top as f64);
    let every = buckets.div_ceil(6).max(1);
    html! {
        svg.chart viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label=(label) {
            @for t in 0..=(top / step) {
                @let y = y_of(t * step);
                line.grid x1=(LEFT) x2=(WIDTH - 4.0) y1=(format!("{y:.1}")) y2=(format!("{y:.1}")) {}
                text.axis x=(LEFT - 6.0) y=(format!("{:.1}", y + 4.0)) text-anchor="end" { (bytes(t * step)) }
            }
            @for b in 0..buckets {
                @let x = LEFT + column * b as f64;
                @let minute = start_minute + step_minutes * i64::try_from(b).unwrap_or(0);
                g {
                    title { (clock(minute)) " UTC: " (bytes(total(b))) }
                    @for (which, v, below) in segments(stacks, other, b) {
                        rect class=(class(which)) x=(format!("{:.1}", x + 0.5)) width=(format!("{:.1}", (column - 1.0).max(0.5)))
                            y=(format!("{:.1}", y_of(below + v))) height=(format!("{:.1}", y_of(below) - y_of(below + v))) {
                            title {
                                @if let Some(i) = which { (stacks[i].label) } @else { "everything else" }
                                ": " (bytes(v)) " at " (clock(minute)) " UTC"
                            }
                        }
                    }
                }
                @if b % every == 0 {
                    text.axis x=(format!("{x:.1}")) y=(HEIGHT - 6.0) { (clock(minute)) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_maximum() {
        assert_eq!(tick_step(0), 1);
        assert_eq!(tick_step(7), 2);
        assert_eq!(tick_step(1_000), 500);
        assert_eq!(tick_step(3_900_000), 1_000_000);
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_500), "1.5 kB");
        assert_eq!(bytes(2_340_000_000), "2.3 GB");
        assert_eq!(clock(25 * 60 + 7), "01:07");
    }

    #[test]
    fn columns_stack_and_every_column_has_its_numbers() {
        let a = [100, 0];
        let b = [50, 10];
        let svg = stacked_columns(
            "test",
            &[Stack { label: "192.0.2.1".into(), values: &a }, Stack { label: "192.0.2.2".into(), values: &b }],
            &[25, 0],
            60,
            5,
        )
        .into_string();
        assert!(svg.contains("01:00 UTC: 175 B"), "{svg}");
        assert!(svg.contains("192.0.2.2: 10 B at 01:05 UTC"), "{svg}");
        assert!(svg.contains("everything else: 25 B at 01:00 UTC"), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 4, "no rectangle for a zero: {svg}");
        // 175 B rounds up to 200 B in steps of 50 B: five gridlines.
        assert_eq!(svg.matches("<line").count(), 5, "{svg}");
    }
}
