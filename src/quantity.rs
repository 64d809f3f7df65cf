//! Kubernetes resource quantities, as `k8s.io/apimachinery/pkg/api/resource.Quantity` parses,
//! compares, adds and prints them: values are exact (held in nano units, rounded up past nano
//! precision as upstream does, capped at 2^63-1), and [`Quantity`]'s `Display` is Go's canonical
//! `String()` (`0.1` → `100m`, `1536Mi` stays, `0.5Gi` → `512Mi`, `1e3` → `1e3`, `1000` → `1k`).

use std::cmp::Ordering;
use std::fmt;

/// How a quantity prints, from the suffix it was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `m`, `k`, `M`, ... or no suffix.
    DecimalSI,
    /// `Ki`, `Mi`, ...
    BinarySI,
    /// `e3`, `E-2`, ...
    DecimalExponent,
}

/// A parsed quantity.
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

/// A string that is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a valid quantity (examples: 100m, 0.5, 1Gi, 1G, 1e3)")]
pub struct QuantityError(pub String);

const NANO: i128 = 1_000_000_000;
/// Upstream caps every quantity at 2^63-1 (in units).
const MAX_NANOS: i128 = (i64::MAX as i128) * NANO;
/// Above this, upstream compares at unit rather than milli precision.
const MAX_MILLI_VALUE: i128 = (i64::MAX / 1000) as i128;

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}
impl Eq for Quantity {}
impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

fn pow10(exp: u32) -> Option<i128> {
    10i128.checked_pow(exp)
}

/// Divides rounding away from zero (Go's `inf.RoundUp`).
fn div_away(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d == 0 { q } else { q + n.signum() }
}

impl Quantity {
    /// Parses a quantity string as upstream's `ParseQuantity`.
    pub fn parse(s: &str) -> Result<Self, QuantityError> {
        let err = || QuantityError(s.to_owned());
        let (negative, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, suffix) = match after.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err());
        }
        let (base2, exponent, format) = parse_suffix(suffix).ok_or_else(err)?;
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        let mut nanos = if digits.is_empty() {
            0
        } else if digits.len() > 38 {
            MAX_NANOS
        } else {
            let mantissa: i128 = digits.parse().map_err(|_| err())?;
            let frac = i32::try_from(frac_part.len()).map_err(|_| err())?;
            scale_to_nanos(mantissa, base2, exponent, frac)
        };
        nanos = nanos.min(MAX_NANOS);
        if negative {
            nanos = -nanos;
        }
        let format = if format == Format::BinarySI && nanos != 0 && nanos.abs() < NANO {
            Format::DecimalSI
        } else {
            format
        };
        Ok(Self { nanos, format })
    }

    /// A whole number of units (DecimalSI).
    pub fn from_units(units: i64) -> Self {
        Self {
            nanos: i128::from(units) * NANO,
            format: Format::DecimalSI,
        }
    }

    /// Zero in `format`.
    pub fn zero(format: Format) -> Self {
        Self { nanos: 0, format }
    }

    /// `self + other`, keeping this quantity's format (or the other's when this one is zero), as
    /// upstream's `Quantity.Add`.
    pub fn add(&self, other: &Quantity) -> Quantity {
        let format = if self.nanos == 0 {
            other.format
        } else {
            self.format
        };
        Quantity {
            nanos: (self.nanos + other.nanos).clamp(-MAX_NANOS, MAX_NANOS),
            format,
        }
    }

    /// `ceil(value)`, as upstream's `Value()`.
    pub fn value(&self) -> i128 {
        ceil_div(self.nanos, NANO)
    }

    /// `ceil(value * 1000)`, as upstream's `MilliValue()`.
    pub fn milli_value(&self) -> i128 {
        ceil_div(self.nanos, 1_000_000)
    }
}

fn ceil_div(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d != 0 && n > 0 { q + 1 } else { q }
}

/// Value in nanos of `mantissa × base^exponent / 10^frac`, rounded away from zero past nano.
fn scale_to_nanos(mantissa: i128, base2: bool, exponent: i32, frac: i32) -> i128 {
    if base2 {
        let shifted = u32::try_from(exponent)
            .ok()
            .and_then(|e| 2i128.checked_pow(e))
            .and_then(|p| mantissa.checked_mul(p));
        let Some(value) = shifted else {
            return MAX_NANOS;
        };
        let e10 = 9 - frac;
        return if e10 >= 0 {
            pow10(e10.unsigned_abs())
                .and_then(|p| value.checked_mul(p))
                .unwrap_or(MAX_NANOS)
        } else {
            pow10(e10.unsigned_abs()).map_or(0, |p| div_away(value, p))
        };
    }
    let e10 = exponent - frac + 9;
    if e10 >= 0 {
        pow10(e10.unsigned_abs())
            .and_then(|p| mantissa.checked_mul(p))
            .unwrap_or(MAX_NANOS)
    } else {
        match pow10(e10.unsigned_abs()) {
            Some(p) => div_away(mantissa, p),
            None => i128::from(mantissa != 0),
        }
    }
}

/// `(base is 2, exponent, format)` for a suffix.
fn parse_suffix(suffix: &str) -> Option<(bool, i32, Format)> {
    let decimal = |e| Some((false, e, Format::DecimalSI));
    let binary = |e| Some((true, e, Format::BinarySI));
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        _ => {
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((false, exp.parse().ok()?, Format::DecimalExponent))
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let whole = self.nanos % NANO == 0;
        if self.format == Format::BinarySI && self.nanos.abs() >= 1024 * NANO && whole {
            let mut value = self.nanos / NANO;
            let mut exp = 0;
            while value % 1024 == 0 && exp < 6 {
                value /= 1024;
                exp += 1;
            }
            return write!(
                f,
                "{value}{}",
                ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][exp]
            );
        }
        let (mut mantissa, mut exp) = (self.nanos, -9i32);
        while mantissa % 10 == 0 {
            mantissa /= 10;
            exp += 1;
        }
        match exp.rem_euclid(3) {
            1 => {
                mantissa *= 10;
                exp -= 1;
            }
            2 => {
                mantissa *= 100;
                exp -= 2;
            }
            _ => {}
        }
        let suffix = match (self.format, exp) {
            (Format::DecimalExponent, 0) => String::new(),
            (Format::DecimalExponent, e) => format!("e{e}"),
            (_, -9) => "n".into(),
            (_, -6) => "u".into(),
            (_, -3) => "m".into(),
            (_, 0) => String::new(),
            (_, 3) => "k".into(),
            (_, 6) => "M".into(),
            (_, 9) => "G".into(),
            (_, 12) => "T".into(),
            (_, 15) => "P".into(),
            (_, 18) => "E".into(),
            (_, e) => format!("e{e}"),
        };
        write!(f, "{mantissa}{suffix}")
    }
}

/// The values upstream's LimitRanger compares: milli precision when all three fit, else units.
pub fn comparable(a: &Quantity, b: &Quantity, c: &Quantity) -> (i128, i128, i128) {
    let (va, vb, vc) = (a.value(), b.value(), c.value());
    if va <= MAX_MILLI_VALUE && vb <= MAX_MILLI_VALUE && vc <= MAX_MILLI_VALUE {
        (a.milli_value(), b.milli_value(), c.milli_value())
    } else {
        (va, vb, vc)
    }
}

/// Whether upstream would compare `v` at milli precision.
pub fn fits_milli(v: &Quantity) -> bool {
    v.value() <= MAX_MILLI_VALUE
}

impl<'de> serde::Deserialize<'de> for Quantity {
    /// A quantity in a policy file: a string (`100m`, `1Gi`) or a plain YAML number (`1`, `0.5`).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as 100m, 0.5, 1Gi or 1G")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Quantity, E> {
                Quantity::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Quantity, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Quantity, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Quantity, E> {
                self.visit_str(&v.to_string())
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        Quantity::parse(s).unwrap().to_string()
    }

    #[test]
    fn prints_go_canonical_form() {
        for (input, expected) in [
            ("100m", "100m"),
            ("0.1", "100m"),
            ("1", "1"),
            ("1000", "1k"),
            ("1.5", "1500m"),
            ("1Gi", "1Gi"),
            ("1536Mi", "1536Mi"),
            ("1.5Gi", "1536Mi"),
            ("0.5Gi", "512Mi"),
            ("1G", "1G"),
            ("1e3", "1e3"),
            ("1E6", "1e6"),
            ("128974848", "128974848"),
            ("129e6", "129e6"),
            ("129000000", "129M"),
            ("123Mi", "123Mi"),
            ("0", "0"),
            ("0.0001", "100u"),
            ("1n", "1n"),
            ("0.1n", "1n"),
            ("100Ki", "100Ki"),
            ("1023", "1023"),
            ("2048", "2048"),
            ("2Ki", "2Ki"),
            ("10e2", "1e3"),
            ("-100m", "-100m"),
            ("0.5Ki", "512"),
            ("1.1Ki", "1126400m"),
            ("+5", "5"),
            ("12e-1", "1200e-3"),
        ] {
            assert_eq!(canon(input), expected, "{input}");
        }
    }

    #[test]
    fn compares_exactly_across_suffixes() {
        let q = |s| Quantity::parse(s).unwrap();
        assert_eq!(q("1Gi"), q("1073741824"));
        assert!(q("1G") < q("1Gi"));
        assert_eq!(q("0.1"), q("100m"));
        assert!(q("600m") < q("800m"));
        assert_eq!(q("1e3"), q("1k"));
    }

    #[test]
    fn rejects_malformed_quantities() {
        for bad in ["", "abc", "1.2.3", "1Xi", "m", "1e", "1e+", "--1", "1 Gi"] {
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn milli_and_unit_values_round_up() {
        let q = Quantity::parse("100.5m").unwrap();
        assert_eq!(q.milli_value(), 101);
        assert_eq!(q.value(), 1);
        assert_eq!(Quantity::parse("2").unwrap().value(), 2);
    }

    #[test]
    fn adds_keeping_the_first_format() {
        let sum = Quantity::parse("512Mi")
            .unwrap()
            .add(&Quantity::parse("512Mi").unwrap());
        assert_eq!(sum.to_string(), "1Gi");
        let cpu = Quantity::parse("100m")
            .unwrap()
            .add(&Quantity::parse("0.4").unwrap());
        assert_eq!(cpu.to_string(), "500m");
    }
}
