//! Kubernetes resource quantities, as `k8s.io/apimachinery/pkg/api/resource.Quantity` parses,
//! compares, adds and prints them: values are exact (held in nano units, rounded up past nano
//! precision as upstream does), and [`Quantity`]'s `Display` is Go's canonical `String()`
//! (`0.1` → `100m`, `1536Mi` stays, `0.5Gi` → `512Mi`, `1e3` → `1e3`, `1000` → `1k`).
//!
//! A value is never wrapped or clipped: one whose magnitude is above [`MAX_UNITS`] (10^24, a
//! yottabyte or a septillion cores; upstream's arbitrary-precision decimals accept more) is
//! refused with [`QuantityError::OutOfRange`], so a policy judges it as an error, never as a
//! small number. The one cap is upstream's own: a binary-suffixed value (`Ki`..`Ei`) above
//! 2^63-1 units *is* 2^63-1 to the apiserver, so it is to confgate too. Every exponent computation is done in 64 bits from a 32-bit exponent, so it
//! cannot overflow.

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

/// Why a string is not a quantity confgate can judge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not a quantity at all.
    #[error("{0:?} is not a valid quantity (examples: 100m, 0.5, 1Gi, 1G, 1e3)")]
    Malformed(String),
    /// A quantity too large to judge exactly.
    #[error("{0:?} is too large to judge exactly: quantities up to 1e24 in magnitude are")]
    OutOfRange(String),
}

/// The largest magnitude, in units, of a quantity confgate judges.
pub const MAX_UNITS: i128 = 1_000_000_000_000_000_000_000_000;

const NANO: i128 = 1_000_000_000;
const MAX_NANOS: i128 = MAX_UNITS * NANO;
/// Upstream's cap for binary-suffixed quantities (`maxAllowed`, 2^63-1 units), in nanos.
const MAX_BINARY_NANOS: i128 = i64::MAX as i128 * NANO;
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

/// True when `limit / request > ratio`, exactly (all three non-negative and `request > 0`),
/// in big integers: the products of two values within range do not fit in 128 bits.
pub fn ratio_exceeds(
    limit: impl Into<num_bigint::BigInt>,
    request: impl Into<num_bigint::BigInt>,
    ratio: impl Into<num_bigint::BigInt>,
) -> bool {
    limit.into() > ratio.into() * request.into()
}

/// Current upstream's `ratioString`: `|limit| / |request|` rounded half to even to six
/// decimals, printed with all six (`4.000000`). `request` must not be zero. Every quantity in
/// range is at most 10^33 nanos, so the ratio never needs upstream's exponent form (used past
/// a scale difference of 40).
pub fn ratio_string(limit: &Quantity, request: &Quantity) -> String {
    use num_bigint::BigInt;
    let (l, r) = (
        BigInt::from(limit.nanos.abs()),
        BigInt::from(request.nanos.abs()),
    );
    let scaled = l * BigInt::from(1_000_000);
    let (mut q, rem) = (&scaled / &r, &scaled % &r);
    let twice = rem * 2;
    if twice > r || (twice == r && &q % 2 == BigInt::from(1)) {
        q += 1;
    }
    let micro = BigInt::from(1_000_000);
    format!("{}.{:06}", &q / &micro, &q % &micro)
}

/// Current upstream's `exceedsAllowed`: `|limit| > |request| × ratio`, exactly.
pub fn exceeds_ratio(limit: &Quantity, request: &Quantity, ratio: &Quantity) -> bool {
    // In nanos: l > r × q / 10^9  ⇔  l × 10^9 > r × q.
    let limit = num_bigint::BigInt::from(limit.nanos.abs()) * NANO;
    ratio_exceeds(limit, request.nanos.abs(), ratio.nanos)
}

/// Divides rounding away from zero (Go's `inf.RoundUp`).
fn div_away(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d == 0 { q } else { q + n.signum() }
}

impl Quantity {
    /// Parses a quantity string as upstream's `ParseQuantity`.
    pub fn parse(s: &str) -> Result<Self, QuantityError> {
        let err = || QuantityError::Malformed(s.to_owned());
        let too_large = || QuantityError::OutOfRange(s.to_owned());
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
        let frac = i64::try_from(frac_part.len()).map_err(|_| err())?;
        let scaled = if digits.is_empty() {
            Some(0)
        } else if digits.len() > 38 {
            // More digits than 128 bits hold: exactly, in big integers (rare, so off the fast path).
            big_scale_to_nanos(digits, base2, exponent, frac)
        } else {
            let mantissa: i128 = digits.parse().map_err(|_| err())?;
            scale_to_nanos(mantissa, base2, exponent, frac)
        };
        let mut nanos = match scaled {
            // Upstream caps a binary-suffixed value at 2^63-1 units (`maxAllowed`), so that is
            // its exact value, however large it was written.
            Some(n) if base2 => n.min(MAX_BINARY_NANOS),
            None if base2 => MAX_BINARY_NANOS,
            Some(n) if n <= MAX_NANOS => n,
            _ => return Err(too_large()),
        };
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

    /// `units` (DecimalSI), saturating past the range as [`Quantity::add`] does.
    pub fn from_units_i128(units: i128) -> Self {
        Self {
            nanos: units.saturating_mul(NANO),
            format: Format::DecimalSI,
        }
    }

    /// `milli / 1000` (DecimalSI), saturating past the range.
    pub fn from_milli(milli: i128) -> Self {
        Self {
            nanos: milli.saturating_mul(1_000_000),
            format: Format::DecimalSI,
        }
    }

    /// Zero in `format`.
    pub fn zero(format: Format) -> Self {
        Self { nanos: 0, format }
    }

    /// `self + other`, keeping this quantity's format (or the other's when this one is zero), as
    /// upstream's `Quantity.Add`. Exact: each term is at most 10^33 nanos, so the sum of fewer
    /// than 170,000 of them fits (a review has at most `--max-review-containers`); beyond, it
    /// saturates, still above any quantity a LimitRange can hold.
    pub fn add(&self, other: &Quantity) -> Quantity {
        let format = if self.nanos == 0 {
            other.format
        } else {
            self.format
        };
        Quantity {
            nanos: self.nanos.saturating_add(other.nanos),
            format,
        }
    }

    /// The exact value in nano-units.
    pub fn nanos(&self) -> i128 {
        self.nanos
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

/// Value in nanos of `mantissa × base^exponent / 10^frac`, rounded away from zero past nano;
/// `None` when it is out of range. The exponents are combined in 64 bits, which cannot overflow
/// (a 32-bit exponent, a digit count, and 9).
fn scale_to_nanos(mantissa: i128, base2: bool, exponent: i32, frac: i64) -> Option<i128> {
    let (value, e10) = if base2 {
        // Binary suffixes are Ki..Ei: exponents 10..60.
        let shifted = u32::try_from(exponent)
            .ok()
            .and_then(|e| 2i128.checked_pow(e))
            .and_then(|p| mantissa.checked_mul(p))?;
        (shifted, 9 - frac)
    } else {
        (mantissa, i64::from(exponent) - frac + 9)
    };
    if e10 >= 0 {
        let scale = u32::try_from(e10).ok().and_then(pow10)?;
        value.checked_mul(scale).filter(|n| *n <= MAX_NANOS)
    } else {
        match u32::try_from(-e10).ok().and_then(pow10) {
            Some(p) => Some(div_away(value, p)),
            // Smaller than one nano: rounds up to one, as upstream rounds up past nano.
            None => Some(i128::from(value != 0)),
        }
    }
}

/// [`scale_to_nanos`] for a mantissa of more than 38 digits, in big integers.
fn big_scale_to_nanos(digits: &str, base2: bool, exponent: i32, frac: i64) -> Option<i128> {
    use num_bigint::BigInt;
    let mut value: BigInt = digits.parse().ok()?;
    let e10 = if base2 {
        value <<= u32::try_from(exponent).ok()?;
        9 - frac
    } else {
        i64::from(exponent) - frac + 9
    };
    let len = i64::try_from(digits.len()).ok()?;
    // value >= 10^(len-1) (no leading zeros): past 10^33 nanos when len - 1 + e10 > 33, and
    // below one nano when len + e10 < 0, checked before any power is built.
    if len - 1 + e10 > 33 {
        return None;
    }
    if len + e10 < 0 {
        return Some(1);
    }
    let scaled = if e10 >= 0 {
        value * BigInt::from(10).pow(u32::try_from(e10).ok()?)
    } else {
        let divisor = BigInt::from(10).pow(u32::try_from(-e10).ok()?);
        let (quotient, remainder) = (&value / &divisor, &value % &divisor);
        if remainder == BigInt::from(0) {
            quotient
        } else {
            quotient + 1
        }
    };
    i128::try_from(scaled).ok().filter(|n| *n <= MAX_NANOS)
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
    fn huge_exponents_are_refused_never_wrapped() {
        for huge in [
            "1e2147483647",
            "10e2146483646",
            "1E2147483647",
            "1e25",
            "1000000000000000000000000001",
            "123456789012345678901234567890123456789012",
            "1234567890123456789012345678901234567890e-5",
        ] {
            assert_eq!(
                Quantity::parse(huge),
                Err(QuantityError::OutOfRange(huge.to_owned())),
                "{huge}"
            );
        }
        // More than 38 digits, brought into range by the exponent: exact.
        assert_eq!(
            Quantity::parse("1000000000000000000000000000.00000000000e-3")
                .unwrap()
                .value(),
            10i128.pow(24)
        );
        assert_eq!(
            Quantity::parse("1234567890123456789012345678901234567890e-30")
                .unwrap()
                .milli_value(),
            1_234_567_890_124
        );
        // At the bound, and tiny values round up to one nano.
        assert_eq!(Quantity::parse("1e24").unwrap().value(), MAX_UNITS);
        assert_eq!(
            Quantity::parse("1e-2147483648").unwrap().to_string(),
            "1e-9"
        );
        assert_eq!(Quantity::parse("-1e24").unwrap().value(), -MAX_UNITS);
    }

    #[test]
    fn binary_quantities_are_capped_at_2_pow_63_like_upstream() {
        // Upstream's ParseQuantity caps binary-suffixed values at maxAllowed (2^63-1), so the
        // apiserver stores and sends 9223372036854775807 for these.
        for big in [
            "900000Ei",
            "9000000000000000000Ki",
            "1000000000000000000000000000000Ki",
        ] {
            assert_eq!(
                Quantity::parse(big).unwrap().value(),
                i128::from(i64::MAX),
                "{big}"
            );
        }
        assert_eq!(
            Quantity::parse("-900000Ei").unwrap().value(),
            -i128::from(i64::MAX)
        );
        assert_eq!(
            Quantity::parse("7Ei").unwrap().value(),
            7 * (1i128 << 60),
            "below the cap: exact"
        );
    }

    #[test]
    fn ratio_strings_round_half_to_even_at_six_decimals() {
        let q = |s| Quantity::parse(s).unwrap();
        assert_eq!(ratio_string(&q("1"), &q("250m")), "4.000000");
        assert_eq!(ratio_string(&q("2"), &q("3")), "0.666667");
        assert_eq!(ratio_string(&q("1"), &q("3")), "0.333333");
        // 0.5000005 and 0.5000015: exactly half way at the sixth decimal, so to even.
        assert_eq!(ratio_string(&q("1000001u"), &q("2")), "0.500000");
        assert_eq!(ratio_string(&q("1000003u"), &q("2")), "0.500002");
        assert_eq!(
            ratio_string(&q("1e24"), &q("1n")),
            format!("1{}.000000", "0".repeat(33))
        );
        assert_eq!(ratio_string(&q("-3"), &q("2")), "1.500000");
        assert!(exceeds_ratio(&q("1000000001n"), &q("1"), &q("1")));
        assert!(!exceeds_ratio(&q("1"), &q("1"), &q("1")));
        assert!(exceeds_ratio(&q("1e22"), &q("1e20"), &q("10")));
    }

    #[test]
    fn ratios_are_compared_exactly_above_64_bits() {
        // 1e22 / 1e20 = 100: above a ratio of 10, though both are above 2^63.
        assert!(ratio_exceeds(10i128.pow(22), 10i128.pow(20), 10));
        assert!(!ratio_exceeds(10i128.pow(21), 10i128.pow(20), 10));
        assert!(ratio_exceeds(MAX_UNITS, 1, MAX_UNITS - 1));
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

    mod reference {
        //! An independent reference: the exact value of a quantity string as a big rational,
        //! rounded up past nano as upstream does, compared with what `Quantity::parse` makes.
        use super::super::*;
        use num_bigint::BigInt;
        use proptest::prelude::*;

        /// `Some(nanos)` exactly, or `None` when above the range.
        fn exact_nanos(negative: bool, int: &str, frac: &str, suffix: &str) -> Option<BigInt> {
            let digits: BigInt = format!("0{int}{frac}").parse().unwrap();
            let (two, ten): (u32, i64) = match suffix {
                "Ki" => (10, 0),
                "Mi" => (20, 0),
                "Gi" => (30, 0),
                "Ti" => (40, 0),
                "Pi" => (50, 0),
                "Ei" => (60, 0),
                "" => (0, 0),
                "n" => (0, -9),
                "u" => (0, -6),
                "m" => (0, -3),
                "k" => (0, 3),
                "M" => (0, 6),
                "G" => (0, 9),
                "T" => (0, 12),
                "P" => (0, 15),
                "E" => (0, 18),
                e => (0, e[1..].parse().unwrap()),
            };
            let mut numerator = digits * BigInt::from(2).pow(two);
            let mut denominator = BigInt::from(1);
            let shift = ten + 9 - frac.len() as i64;
            if shift >= 0 {
                numerator *= BigInt::from(10).pow(shift as u32);
            } else {
                denominator *= BigInt::from(10).pow((-shift) as u32);
            }
            let (quotient, remainder) = (&numerator / &denominator, &numerator % &denominator);
            let rounded = if remainder == BigInt::from(0) {
                quotient
            } else {
                quotient + 1
            };
            let rounded = if two > 0 {
                // Upstream caps binary-suffixed values at 2^63-1 units.
                rounded.min(BigInt::from(MAX_BINARY_NANOS))
            } else {
                rounded
            };
            if rounded > BigInt::from(MAX_NANOS) {
                return None;
            }
            Some(if negative { -rounded } else { rounded })
        }

        fn suffix() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi",
                    "Ei",
                ])
                .prop_map(str::to_owned),
                (-45i32..45).prop_map(|e| format!("e{e}")),
            ]
        }

        proptest! {
            #[test]
            fn parses_to_the_exact_value_or_refuses(
                negative in any::<bool>(),
                int in "[0-9]{0,30}",
                frac in "[0-9]{0,12}",
                suffix in suffix(),
            ) {
                prop_assume!(!int.is_empty() || !frac.is_empty());
                let text = format!(
                    "{}{int}{}{suffix}",
                    if negative { "-" } else { "" },
                    if frac.is_empty() { String::new() } else { format!(".{frac}") }
                );
                match (Quantity::parse(&text), exact_nanos(negative, &int, &frac, &suffix)) {
                    (Ok(q), Some(expected)) => prop_assert_eq!(BigInt::from(q.nanos), expected, "{}", text),
                    (Err(QuantityError::OutOfRange(_)), None) => {}
                    (got, expected) => prop_assert!(false, "{}: parsed {:?}, reference {:?}", text, got, expected),
                }
            }
        }
    }
}
