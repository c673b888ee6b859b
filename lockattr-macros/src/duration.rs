//! Duration literals of the attribute: `"500ms"`, `"30s"`, `"1m30s"`, `"2h"`.
//!
//! Pure: takes the literal's text and returns milliseconds or a message; the caller attaches the
//! span. Milliseconds are the resolution Redis leases have (`PX`), so there is no `us`/`ns`.

/// Units, largest first, with their size in milliseconds.
const UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

const EXPECTED: &str = "expected a number and a unit such as `\"500ms\"`, `\"30s\"` or `\"1m30s\"`";

/// Parses a duration such as `"1m30s"` into milliseconds.
///
/// Grammar: one or more `<digits><unit>` parts, units from largest to smallest, each at most
/// once; ASCII spaces may separate the parts and a number from its unit (`"1m 30s"`,
/// `"100 ms"`), and `_` may group digits (`"10_000ms"`).
pub(crate) fn parse(text: &str) -> Result<u64, String> {
    let trimmed = text.trim_matches(' ');
    if trimmed.is_empty() {
        return Err(format!("empty duration; {EXPECTED}"));
    }
    let mut rest = trimmed;
    let mut total: u64 = 0;
    // Index into UNITS of the last unit seen, to enforce "largest to smallest, once each".
    let mut last_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        let digits = &rest[..digits_len];
        rest = rest[digits_len..].trim_start_matches(' ');
        let unit_len = rest
            .find(|c: char| !c.is_alphabetic() && c != 'µ')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let after_unit = &rest[unit_len..];

        if digits.trim_matches('_').is_empty() {
            return Err(no_number(trimmed, unit, rest));
        }
        if digits.starts_with('_') {
            return Err(format!(
                "`{trimmed}` is not a valid duration: a number cannot start with `_`"
            ));
        }
        if after_unit.starts_with(['.', ',']) && unit.is_empty() {
            return Err(fractional(trimmed));
        }
        if unit.is_empty() {
            return Err(if after_unit.is_empty() {
                format!(
                    "`{trimmed}` has no unit; write e.g. `\"{}s\"` or `\"{}ms\"` \
                     (units: `ms`, `s`, `m`, `h`)",
                    digits.replace('_', ""),
                    digits.replace('_', "")
                )
            } else {
                format!("`{trimmed}` is not a valid duration; {EXPECTED}")
            });
        }
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(unknown_unit(trimmed, unit));
        };
        if let Some(last) = last_unit {
            if index == last {
                return Err(format!(
                    "`{trimmed}` gives the unit `{unit}` twice; write each unit once"
                ));
            }
            if index < last {
                return Err(format!(
                    "`{trimmed}` has its units out of order; write them from largest to \
                     smallest, as in `\"1h30m\"` or `\"1m30s\"`"
                ));
            }
        }
        last_unit = Some(index);

        let number: u64 = digits
            .replace('_', "")
            .parse()
            .map_err(|_| overflow(trimmed))?;
        let part = number
            .checked_mul(UNITS[index].1)
            .ok_or_else(|| overflow(trimmed))?;
        total = total.checked_add(part).ok_or_else(|| overflow(trimmed))?;

        rest = after_unit.trim_start_matches(' ');
        if rest.starts_with(['.', ',']) {
            return Err(fractional(trimmed));
        }
    }
    Ok(total)
}

fn no_number(whole: &str, unit: &str, rest: &str) -> String {
    if rest.starts_with('-') {
        format!("`{whole}` is negative; a duration is a whole number of a unit, `\"0s\"` or more")
    } else if rest.starts_with(['.', ',']) {
        fractional(whole)
    } else if unit.is_empty() {
        format!("`{whole}` is not a valid duration; {EXPECTED}")
    } else {
        format!("`{whole}` is not a valid duration: `{unit}` needs a number before it, as in `\"5{unit}\"`")
    }
}

fn fractional(whole: &str) -> String {
    format!(
        "`{whole}` is not a valid duration: fractions are not supported; combine units instead, \
         as in `\"1s500ms\"` or `\"1m30s\"`"
    )
}

fn overflow(whole: &str) -> String {
    format!(
        "the duration `{whole}` is too large: it overflows a 64-bit count of milliseconds \
         (about 584 million years)"
    )
}

fn unknown_unit(whole: &str, unit: &str) -> String {
    let hint = match unit {
        "sec" | "secs" | "second" | "seconds" | "S" => " (did you mean `s`?)".to_owned(),
        "min" | "mins" | "minute" | "minutes" | "M" => " (did you mean `m`?)".to_owned(),
        "hr" | "hrs" | "hour" | "hours" | "H" => " (did you mean `h`?)".to_owned(),
        "msec" | "msecs" | "millis" | "milli" | "millisecond" | "milliseconds" | "MS" | "Ms" => {
            " (did you mean `ms`?)".to_owned()
        }
        "d" | "day" | "days" | "w" | "week" | "weeks" => {
            "; days and weeks are not supported, use hours (`\"24h\"`)".to_owned()
        }
        "us" | "µs" | "ns" | "micros" | "nanos" => {
            "; locks have millisecond resolution (Redis `PX`), use `ms`".to_owned()
        }
        _ => String::new(),
    };
    format!("unknown unit `{unit}` in `{whole}`; expected one of `ms`, `s`, `m`, `h`{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders milliseconds the way a user would write them (`90000` -> `"1m30s"`).
    fn render(mut ms: u64) -> String {
        if ms == 0 {
            return "0s".to_owned();
        }
        let mut out = String::new();
        for (name, size) in UNITS {
            if ms >= size {
                out.push_str(&(ms / size).to_string());
                out.push_str(name);
                ms %= size;
            }
        }
        out
    }

    #[test]
    fn single_units() {
        assert_eq!(parse("0s"), Ok(0));
        assert_eq!(parse("0ms"), Ok(0));
        assert_eq!(parse("250ms"), Ok(250));
        assert_eq!(parse("2s"), Ok(2_000));
        assert_eq!(parse("100s"), Ok(100_000));
        assert_eq!(parse("5m"), Ok(300_000));
        assert_eq!(parse("1h"), Ok(3_600_000));
    }

    #[test]
    fn combined_units_and_spacing() {
        assert_eq!(parse("1m30s"), Ok(90_000));
        assert_eq!(parse("1h1m1s1ms"), Ok(3_661_001));
        assert_eq!(parse("1m 30s"), Ok(90_000));
        assert_eq!(parse(" 100 ms "), Ok(100));
        assert_eq!(parse("10_000ms"), Ok(10_000));
        assert_eq!(parse("2h500ms"), Ok(7_200_500));
    }

    #[test]
    fn missing_or_unknown_units() {
        let e = parse("100").unwrap_err();
        assert!(e.contains("has no unit") && e.contains("\"100s\""), "{e}");
        let e = parse("5sec").unwrap_err();
        assert!(
            e.contains("unknown unit `sec`") && e.contains("did you mean `s`"),
            "{e}"
        );
        let e = parse("2 minutes").unwrap_err();
        assert!(e.contains("did you mean `m`"), "{e}");
        let e = parse("1d").unwrap_err();
        assert!(e.contains("days and weeks"), "{e}");
        let e = parse("10us").unwrap_err();
        assert!(e.contains("millisecond resolution"), "{e}");
        let e = parse("3x").unwrap_err();
        assert!(e.contains("unknown unit `x`"), "{e}");
    }

    #[test]
    fn malformed_numbers() {
        assert!(parse("").unwrap_err().contains("empty duration"));
        assert!(parse("   ").unwrap_err().contains("empty duration"));
        assert!(parse("s").unwrap_err().contains("needs a number"));
        assert!(parse("-1s").unwrap_err().contains("negative"));
        assert!(parse("1.5s").unwrap_err().contains("fractions"));
        assert!(parse("1s.5").unwrap_err().contains("fractions"));
        assert!(parse(".5s").unwrap_err().contains("fractions"));
        assert!(parse("_1s").unwrap_err().contains("cannot start with `_`"));
        assert!(parse("1s!").unwrap_err().contains("not a valid duration"));
        assert!(parse("1 s 2").unwrap_err().contains("has no unit"));
    }

    #[test]
    fn unit_order_and_repetition() {
        assert!(parse("30s1m").unwrap_err().contains("out of order"));
        assert!(parse("1s1s").unwrap_err().contains("twice"));
        assert!(parse("500ms1s").unwrap_err().contains("out of order"));
    }

    #[test]
    fn overflow_is_detected() {
        // u64::MAX milliseconds is the largest representable value.
        assert_eq!(parse("18446744073709551615ms"), Ok(u64::MAX));
        assert!(parse("18446744073709551616ms")
            .unwrap_err()
            .contains("too large"));
        assert!(parse("99999999999999999999999s")
            .unwrap_err()
            .contains("too large"));
        assert!(parse("5124095576030432h")
            .unwrap_err()
            .contains("too large"));
        assert!(parse("5124095576030431h1000000000000000ms")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn render_round_trips() {
        for text in ["0s", "1ms", "1s", "1m30s", "2h", "1h1m1s1ms", "59m59s999ms"] {
            assert_eq!(render(parse(text).unwrap()), text);
        }
    }
}
