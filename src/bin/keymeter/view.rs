//! What a person at a terminal reads (`--json` is for programs): tables with a header row, times in the local
//! zone and relative to now, money with its currency, prices per million tokens, and progress on stderr.

use std::io::IsTerminal;
use std::time::Duration;

use chrono::{DateTime, Local, Utc};
use comfy_table::{
    Attribute, Cell, CellAlignment, Color, ContentArrangement, Table, TableComponent, presets,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rust_decimal::Decimal;

/// Whether stdout may be coloured: a terminal, and `NO_COLOR` unset or empty (no-color.org).
pub(crate) fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A table with `header` (bold on a colour terminal), fitted to the terminal's width.
pub(crate) fn table<'a>(header: impl IntoIterator<Item = &'a str>) -> Table {
    let mut t = Table::new();
    // Columns and one rule under the header, as `ps` or `docker ps` print them: easy to read and to grep.
    t.load_preset(presets::NOTHING)
        .set_style(TableComponent::HeaderLines, '─')
        .set_style(TableComponent::MiddleHeaderIntersections, '─')
        .set_content_arrangement(ContentArrangement::Dynamic);
    let bold = colour();
    t.set_header(header.into_iter().map(|h| {
        let cell = Cell::new(h);
        if bold {
            cell.add_attribute(Attribute::Bold)
        } else {
            cell
        }
    }));
    t
}

/// Right-aligns the columns at `indexes` (numbers and money).
pub(crate) fn align_right(t: &mut Table, indexes: &[usize]) {
    for &i in indexes {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// A two-column table of fields and values.
pub(crate) fn fields<'a>(rows: impl IntoIterator<Item = (&'a str, String)>) -> Table {
    let mut t = table(["Field", "Value"]);
    for (k, v) in rows {
        t.add_row([Cell::new(k), Cell::new(v)]);
    }
    t
}

/// A status word, green when `good` and red otherwise on a colour terminal.
pub(crate) fn status(word: &str, good: bool) -> Cell {
    let cell = Cell::new(word);
    if colour() {
        cell.fg(if good { Color::Green } else { Color::Red })
    } else {
        cell
    }
}

/// A time in the local zone with how long ago (or how far ahead) it is: `2026-11-22 14:03 (3 min ago)`.
pub(crate) fn when(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!(
        "{} ({})",
        t.with_timezone(&Local).format("%Y-%m-%d %H:%M"),
        relative(t, now)
    )
}

/// [`when`], or `never` for none.
pub(crate) fn when_or(t: Option<DateTime<Utc>>, now: DateTime<Utc>, none: &str) -> String {
    t.map_or_else(|| none.to_owned(), |t| when(t, now))
}

/// `just now`, `3 min ago`, `in 2 h`, `5 days ago`.
pub(crate) fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    let (n, ahead) = (secs.unsigned_abs(), secs < 0);
    let span = match n {
        0..45 => return "just now".to_owned(),
        45..5_400 => format!("{} min", (n + 30) / 60),
        5_400..172_800 => format!("{} h", (n + 1_800) / 3_600),
        _ => format!("{} days", (n + 43_200) / 86_400),
    };
    if ahead {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// An exact amount with its currency, at least two decimals and never rounded: `$0.004125`, `12.50 EUR`.
pub(crate) fn money(amount: Decimal, currency: &str) -> String {
    let mut d = amount.normalize();
    if d.scale() < 2 {
        d.rescale(2);
    }
    match currency {
        "USD" => format!("${d}"),
        other => format!("{d} {other}"),
    }
}

/// A rate per token as the price of a million tokens, exact.
pub(crate) fn per_million(rate: Decimal) -> Decimal {
    rate.checked_mul(Decimal::from(1_000_000)).unwrap_or(rate)
}

/// A rate as people quote it: `$2.50 / 1M tokens`, `$0.035 / query`, `$0.04 / image`.
pub(crate) fn rate(rate: Decimal, currency: &str, unit: &str) -> String {
    if unit == "token" {
        format!("{} / 1M tokens", money(per_million(rate), currency))
    } else {
        format!("{} / {unit}", money(rate, currency))
    }
}

/// A count with thousands separators: `1,234,567`.
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A bar of `width` cells for `n` out of `max`, in eighths: the per-day column of `keys stats`.
pub(crate) fn bar(n: u64, max: u64, width: usize) -> String {
    const EIGHTHS: [char; 8] = ['▏', '▎', '▍', '▌', '▋', '▊', '▉', '█'];
    if max == 0 || n == 0 {
        return String::new();
    }
    let eighths = ((n as u128 * width as u128 * 8).div_ceil(max as u128)) as usize;
    let mut out = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        out.push(EIGHTHS[eighths % 8 - 1]);
    }
    out
}

/// A progress bar on stderr for `total` items of `what`; drawn only when stderr is a terminal.
pub(crate) fn progress(total: u64, what: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{msg} [{bar:32.cyan/blue}] {human_pos}/{human_len} ({eta} left)",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}

/// A spinner on stderr for work of unknown length; only on a terminal.
pub(crate) fn spinner(what: &str) -> ProgressBar {
    let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn amounts_keep_every_decimal_and_name_their_currency() {
        assert_eq!(money("0.004125".parse().unwrap(), "USD"), "$0.004125");
        assert_eq!(money("2.5".parse().unwrap(), "USD"), "$2.50");
        assert_eq!(money("12".parse().unwrap(), "EUR"), "12.00 EUR");
        assert_eq!(
            rate("0.0000025".parse().unwrap(), "USD", "token"),
            "$2.50 / 1M tokens"
        );
        assert_eq!(
            rate("0.035".parse().unwrap(), "USD", "query"),
            "$0.035 / query"
        );
    }

    #[test]
    fn times_read_relative_to_now() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        let ago = |s: i64| relative(now - chrono::Duration::seconds(s), now);
        assert_eq!(ago(10), "just now");
        assert_eq!(ago(180), "3 min ago");
        assert_eq!(ago(7_200), "2 h ago");
        assert_eq!(ago(5 * 86_400), "5 days ago");
        assert_eq!(ago(-3_600 * 3), "in 3 h");
    }

    #[test]
    fn counts_and_bars() {
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(bar(10, 10, 4), "████");
        assert_eq!(bar(0, 10, 4), "");
        assert_eq!(bar(1, 10, 4), "▌");
    }
}
