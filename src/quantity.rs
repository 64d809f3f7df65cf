//! Kubernetes resource quantities, as `k8s.io/apimachinery/pkg/api/resource.Quantity` parses,
//! compares, adds and prints them: values are exact (held in nano units, rounded up past nano
//! precision as upstream does), and [`Quantity`]'s `Display` is Go's canonical `String()`
//! (`0.1` → `100m`, `1536Mi` stays, `0.5Gi` → `512Mi`, `1e3` → `1e3`, `1000` → `1k`).
//!
//! A value is never wrapped or clipped. Values up to 10^24 in magnitude (a yottabyte, a
//! septillion cores) are held in 128 bits; larger ones (`1e2147483647` is a quantity the
//! apiserver accepts) as a big integer and a power of ten, so `1e2147483647` costs a few bytes
//! and is compared by its magnitude first, never by writing out its digits. The one bound is
//! [`MAX_DIGITS`] significant digits, for a value written out (a 100,001-digit number, or a sum of
//! `1e100001` and `1n`): past it a quantity is refused with [`QuantityError::OutOfRange`] and
//! a policy judges it as an error, never as another number. Upstream's own caps are kept: a
//! binary-suffixed value (`Ki`..`Ei`) above 2^63-1 units *is* 2^63-1 to the apiserver, so it is
//! to confgate too; an exponent is read as 64 bits and kept as its low 32 (`1e4294967296` is 1),
//! as upstream's `ParseQuantity` does.

use num_bigint::{BigInt, Sign};
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
#[derive(Debug, Clone)]
pub struct Quantity {
    amount: Amount,
    format: Format,
    /// The power of ten upstream's representation of the value is scaled by (`1k` is 1 × 10^3,
    /// `1000` is 1000 × 10^0, `1.5Gi` is 1610612736000000000 × 10^-9): it decides only whether a
    /// ratio message prints in full or with an exponent, as upstream's `ratioString` does.
    scale: i64,
}

/// The exact value, in nano-units.
#[derive(Debug, Clone)]
enum Amount {
    /// At most [`MAX_NANOS`] in magnitude.
    Nanos(i128),
    /// Above [`MAX_NANOS`] in magnitude: `mantissa × 10^exp` nanos, the mantissa without
    /// trailing zeros and `exp >= 0`.
    Big { mantissa: BigInt, exp: i64 },
}

/// Why a string is not a quantity confgate can judge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not a quantity at all.
    #[error("{0:?} is not a valid quantity (examples: 100m, 0.5, 1Gi, 1G, 1e3)")]
    Malformed(String),
    /// A quantity with more significant digits than confgate writes out.
    #[error(
        "{0:?} is too large to judge exactly: quantities of up to 100000 significant digits are"
    )]
    OutOfRange(String),
}

/// The most significant digits a value may have when written out in full (`1e2147483647`
/// has one).
pub const MAX_DIGITS: u64 = 100_000;

/// The largest magnitude, in units, held in 128 bits.
const MAX_UNITS: i128 = 1_000_000_000_000_000_000_000_000;
const NANO: i128 = 1_000_000_000;
const MAX_NANOS: i128 = MAX_UNITS * NANO;
/// Upstream's cap for binary-suffixed quantities (`maxAllowed`, 2^63-1 units), in nanos.
const MAX_BINARY_NANOS: i128 = i64::MAX as i128 * NANO;
/// Above this, upstream compares at unit rather than milli precision.
const MAX_MILLI_VALUE: i128 = (i64::MAX / 1000) as i128;
/// Upstream's `ratioFoldLimit`: past this difference of scales a ratio prints with an exponent.
const RATIO_FOLD_LIMIT: i64 = 40;

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
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
        match (&self.amount, &other.amount) {
            (Amount::Nanos(a), Amount::Nanos(b)) => a.cmp(b),
            _ => {
                let ((a, ea), (b, eb)) = (self.parts(), other.parts());
                cmp_scaled(&a, ea, &b, eb)
            }
        }
    }
}

fn pow10(exp: u32) -> Option<i128> {
    10i128.checked_pow(exp)
}

fn big_pow10(exp: u64) -> BigInt {
    // Callers bound `exp` by [`MAX_DIGITS`] or by a digit count, far below u32::MAX.
    BigInt::from(10).pow(u32::try_from(exp).unwrap_or(u32::MAX))
}

/// The number of decimal digits of `|n|` (1 for zero).
fn digits(n: &BigInt) -> u64 {
    n.magnitude().to_str_radix(10).len() as u64
}

/// Compares `a × 10^ea` with `b × 10^eb` exactly, by magnitude first: the digits of a power of
/// ten are never written out, only a shift as small as the difference of the digit counts.
fn cmp_scaled(a: &BigInt, ea: i64, b: &BigInt, eb: i64) -> Ordering {
    let (sa, sb) = (a.sign(), b.sign());
    if sa != sb || sa == Sign::NoSign {
        return sa.cmp(&sb);
    }
    // 10^(ma-1) <= |a| × 10^ea < 10^ma, and likewise for b.
    let ma = digits(a) as i64 + ea;
    let mb = digits(b) as i64 + eb;
    let magnitude = if ma != mb {
        ma.cmp(&mb)
    } else if ea >= eb {
        (a.magnitude() * big_pow10((ea - eb) as u64).magnitude()).cmp(b.magnitude())
    } else {
        a.magnitude()
            .cmp(&(b.magnitude() * big_pow10((eb - ea) as u64).magnitude()))
    };
    if sa == Sign::Minus {
        magnitude.reverse()
    } else {
        magnitude
    }
}

/// True when `limit / request > ratio`, exactly (all three non-negative and `request > 0`),
/// in big integers: the products of two values within range do not fit in 128 bits.
pub fn rounded_ratio_exceeds(
    limit: impl Into<BigInt>,
    request: impl Into<BigInt>,
    ratio: impl Into<BigInt>,
) -> bool {
    limit.into() > ratio.into() * request.into()
}

/// Current upstream's `ratioString`: `|limit| / |request|` rounded half to even to six
/// decimals, printed with all six (`4.000000`); past a difference of 40 between the scales
/// of their representations (`1e50` over `1`), the mantissa with six decimals and the exponent
/// (`1.000000e50`). `request` must not be zero.
pub fn ratio_string(limit: &Quantity, request: &Quantity) -> String {
    let ((l, el), (r, er)) = (limit.parts(), request.parts());
    let (l, r) = (
        BigInt::from(l.magnitude().clone()),
        BigInt::from(r.magnitude().clone()),
    );
    let exp = limit.scale - request.scale;
    // The quotient's digits before the point; written out in full only within the digit budget
    // (upstream's own parse would already have written such values out).
    let whole_digits = (digits(&l) as i64 + el) - (digits(&r) as i64 + er);
    if (-RATIO_FOLD_LIMIT..=RATIO_FOLD_LIMIT).contains(&exp) && whole_digits <= MAX_DIGITS as i64 {
        // In full: l × 10^el / (r × 10^er) to six decimals.
        let shift = el - er + 6;
        let (n, d) = if shift >= 0 {
            (l * big_pow10(shift as u64), r)
        } else {
            (l, r * big_pow10(shift.unsigned_abs()))
        };
        let q = div_half_even(&n, &d);
        let micro = BigInt::from(1_000_000);
        return format!("{}.{:06}", &q / &micro, &q % &micro);
    }
    // With an exponent: the quotient of the two mantissas brought into [1, 10) first.
    let (mut n, mut d) = (l, r);
    let mut shift = digits(&d) as i64 - digits(&n) as i64;
    if shift >= 0 {
        n *= big_pow10(shift as u64);
    } else {
        d *= big_pow10(shift.unsigned_abs());
    }
    if n < d {
        n *= 10;
        shift += 1;
    }
    let mut micros = div_half_even(&(n * 1_000_000), &d);
    // Rounding can carry the mantissa to ten: divided back (rounded again, as upstream does),
    // the exponent goes up by one.
    if micros >= BigInt::from(10_000_000) {
        micros = div_half_even(&micros, &BigInt::from(10));
        shift -= 1;
    }
    let micro = BigInt::from(1_000_000);
    let mantissa = format!("{}.{:06}", &micros / &micro, &micros % &micro);
    let exp = el - er - shift;
    if exp == 0 {
        mantissa
    } else {
        format!("{mantissa}e{exp}")
    }
}

/// `n / d` rounded half to even (`n >= 0`, `d > 0`).
fn div_half_even(n: &BigInt, d: &BigInt) -> BigInt {
    let (mut q, rem) = (n / d, n % d);
    let twice = rem * 2;
    if twice > *d || (twice == *d && &q % 2 == BigInt::from(1)) {
        q += 1;
    }
    q
}

/// Current upstream's `exceedsAllowed`: `|limit| > |request| × ratio`, exactly, whatever the
/// exponents.
pub fn exceeds_ratio(limit: &Quantity, request: &Quantity, ratio: &Quantity) -> bool {
    let ((l, el), (r, er), (q, eq)) = (limit.parts(), request.parts(), ratio.parts());
    let (l, r) = (
        BigInt::from(l.magnitude().clone()),
        BigInt::from(r.magnitude().clone()),
    );
    // In nanos: request × ratio is r × q × 10^(er + eq) / 10^9.
    cmp_scaled(&l, el, &(r * q), er + eq - 9) == Ordering::Greater
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
        let scale = representation_scale(int_part, frac_part, base2, exponent);
        let amount = if digits.is_empty() {
            Amount::Nanos(0)
        } else if base2 {
            // Upstream caps a binary-suffixed value at 2^63-1 units (`maxAllowed`), so that is
            // its exact value, however large it was written.
            let nanos = if digits.len() > 38 {
                big_binary_to_nanos(digits, exponent, frac).ok_or_else(err)?
            } else {
                let mantissa: i128 = digits.parse().map_err(|_| err())?;
                scale_to_nanos(mantissa, base2, exponent, frac)
            };
            Amount::Nanos(nanos.map_or(MAX_BINARY_NANOS, |n| n.min(MAX_BINARY_NANOS)))
        } else {
            let small = if digits.len() > 38 {
                None
            } else {
                let mantissa: i128 = digits.parse().map_err(|_| err())?;
                scale_to_nanos(mantissa, base2, exponent, frac)
            };
            match small {
                Some(n) if n <= MAX_NANOS => Amount::Nanos(n),
                _ => {
                    if digits.len() as u64 > MAX_DIGITS {
                        return Err(too_large());
                    }
                    big_decimal(digits, i64::from(exponent) - frac + 9).ok_or_else(too_large)?
                }
            }
        };
        let amount = if negative { amount.negated() } else { amount };
        let format = if format == Format::BinarySI
            && amount.is_nonzero()
            && matches!(amount, Amount::Nanos(n) if n.abs() < NANO)
        {
            Format::DecimalSI
        } else {
            format
        };
        Ok(Self {
            amount,
            format,
            scale,
        })
    }

    /// A whole number of units (DecimalSI).
    pub fn from_units(units: i64) -> Self {
        Self {
            amount: Amount::Nanos(i128::from(units) * NANO),
            format: Format::DecimalSI,
            scale: 0,
        }
    }

    /// `units` (DecimalSI), exact.
    pub fn from_units_i128(units: i128) -> Self {
        Self {
            amount: Amount::scaled(units, 9),
            format: Format::DecimalSI,
            scale: 0,
        }
    }

    /// `milli / 1000` (DecimalSI), exact.
    pub fn from_milli(milli: i128) -> Self {
        Self {
            amount: Amount::scaled(milli, 6),
            format: Format::DecimalSI,
            scale: -3,
        }
    }

    /// Zero in `format`.
    pub fn zero(format: Format) -> Self {
        Self {
            amount: Amount::Nanos(0),
            format,
            scale: 0,
        }
    }

    /// `self + other`, keeping this quantity's format (or the other's when this one is zero), as
    /// upstream's `Quantity.Add`; `None` when the exact sum has more than [`MAX_DIGITS`]
    /// significant digits (`1e100001` plus `1n`).
    pub fn checked_add(&self, other: &Quantity) -> Option<Quantity> {
        let format = if self.is_zero() {
            other.format
        } else {
            self.format
        };
        // Upstream's sum keeps the finer of the two representations.
        let scale = match (self.is_zero(), other.is_zero()) {
            (true, _) => other.scale,
            (_, true) => self.scale,
            _ => self.scale.min(other.scale),
        };
        let amount = match (&self.amount, &other.amount) {
            (Amount::Nanos(0), amount) | (amount, Amount::Nanos(0)) => amount.clone(),
            (Amount::Nanos(a), Amount::Nanos(b)) if (a + b).abs() <= MAX_NANOS => {
                Amount::Nanos(a + b)
            }
            _ => {
                let ((a, ea), (b, eb)) = (self.parts(), other.parts());
                let e = ea.min(eb);
                let (sa, sb) = ((ea - e) as u64, (eb - e) as u64);
                if digits(&a) + sa > MAX_DIGITS + 1 || digits(&b) + sb > MAX_DIGITS + 1 {
                    return None;
                }
                Amount::from_parts(a * big_pow10(sa) + b * big_pow10(sb), e)?
            }
        };
        Some(Quantity {
            amount,
            format,
            scale,
        })
    }

    /// [`Quantity::checked_add`]; past [`MAX_DIGITS`], the larger of the two in magnitude
    /// (callers that must know report such a sum first, as [`unjudgeable_sums`] does).
    pub fn add(&self, other: &Quantity) -> Quantity {
        self.checked_add(other).unwrap_or_else(|| {
            let (a, b) = (self.magnitude(), other.magnitude());
            if a >= b { self.clone() } else { other.clone() }
        })
    }

    fn magnitude(&self) -> Quantity {
        if self.signum() < 0 {
            Quantity {
                amount: self.amount.negated(),
                ..self.clone()
            }
        } else {
            self.clone()
        }
    }

    /// -1, 0 or 1.
    pub fn signum(&self) -> i32 {
        match &self.amount {
            Amount::Nanos(n) => n.signum() as i32,
            Amount::Big { mantissa, .. } => match mantissa.sign() {
                Sign::Minus => -1,
                Sign::NoSign => 0,
                Sign::Plus => 1,
            },
        }
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.signum() == 0
    }

    /// Whether the value fits the 128-bit form (at most 10^24 in magnitude), where
    /// [`Quantity::value`] and [`Quantity::milli_value`] are defined.
    pub fn is_small(&self) -> bool {
        matches!(self.amount, Amount::Nanos(_))
    }

    /// The exact value as `mantissa × 10^exp` nanos.
    fn parts(&self) -> (BigInt, i64) {
        match &self.amount {
            Amount::Nanos(n) => (BigInt::from(*n), 0),
            Amount::Big { mantissa, exp } => (mantissa.clone(), *exp),
        }
    }

    /// `ceil(value)`, as upstream's `Value()`; for a value above 10^24 in magnitude, the
    /// 128-bit bound of its sign.
    pub fn value(&self) -> i128 {
        match &self.amount {
            Amount::Nanos(n) => ceil_div(*n, NANO),
            Amount::Big { mantissa, .. } => bound(mantissa),
        }
    }

    /// `ceil(value * 1000)`, as upstream's `MilliValue()`; bounded as [`Quantity::value`].
    pub fn milli_value(&self) -> i128 {
        match &self.amount {
            Amount::Nanos(n) => ceil_div(*n, 1_000_000),
            Amount::Big { mantissa, .. } => bound(mantissa),
        }
    }
}

fn bound(mantissa: &BigInt) -> i128 {
    if mantissa.sign() == Sign::Minus {
        i128::MIN
    } else {
        i128::MAX
    }
}

impl Amount {
    /// `value × 10^exp` nanos: in 128 bits when it fits, without a big integer (the 1.26 pod
    /// totals build one per resource on every review); an `i128` has at most 39 digits, far
    /// within [`MAX_DIGITS`].
    fn scaled(value: i128, exp: u32) -> Amount {
        match pow10(exp).and_then(|p| value.checked_mul(p)) {
            Some(n) if n.abs() <= MAX_NANOS => Amount::Nanos(n),
            _ => {
                Amount::from_parts(BigInt::from(value), i64::from(exp)).unwrap_or(Amount::Nanos(0))
            }
        }
    }

    /// `mantissa × 10^exp` nanos (`exp >= 0`), in the 128-bit form when it fits; `None` past
    /// [`MAX_DIGITS`] significant digits.
    fn from_parts(mut mantissa: BigInt, mut exp: i64) -> Option<Amount> {
        if mantissa.sign() == Sign::NoSign {
            return Some(Amount::Nanos(0));
        }
        // Trailing zeros into the exponent, counted on the digits at once: dividing by ten one
        // zero at a time is quadratic in a long mantissa.
        if (&mantissa % BigInt::from(10)).sign() == Sign::NoSign {
            let text = mantissa.to_str_radix(10);
            let trimmed = text.trim_end_matches('0');
            exp += (text.len() - trimmed.len()) as i64;
            mantissa = trimmed.parse().ok()?;
        }
        let length = digits(&mantissa);
        if length > MAX_DIGITS {
            return None;
        }
        // At most 34 digits in all: it may fit in 128 bits.
        if length as i64 + exp <= 34
            && let Some(n) = u32::try_from(exp)
                .ok()
                .and_then(pow10)
                .and_then(|p| i128::try_from(&mantissa).ok()?.checked_mul(p))
            && n.abs() <= MAX_NANOS
        {
            return Some(Amount::Nanos(n));
        }
        Some(Amount::Big { mantissa, exp })
    }

    fn negated(&self) -> Amount {
        match self {
            Amount::Nanos(n) => Amount::Nanos(-n),
            Amount::Big { mantissa, exp } => Amount::Big {
                mantissa: -mantissa.clone(),
                exp: *exp,
            },
        }
    }

    fn is_nonzero(&self) -> bool {
        !matches!(self, Amount::Nanos(0))
    }
}

fn ceil_div(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d != 0 && n > 0 { q + 1 } else { q }
}

/// The power of ten upstream's `ParseQuantity` scales the value by: its int64 form (at most
/// 18 digits, a scale of at least nano; binary suffixes only whole and small enough) keeps the
/// written exponent, the arbitrary-precision form is rounded to nano (-9).
fn representation_scale(int_part: &str, frac_part: &str, base2: bool, exponent: i32) -> i64 {
    let num = int_part.trim_start_matches('0');
    let length = (num.len() + frac_part.len()) as i64;
    if base2 {
        // Whole, 15 - len - exponent*3/10 - 1 >= 0, and the product fits in 63 bits (checked
        // last, on the integer digits themselves: no allocation on this per-quantity path).
        let precision = 15 - length - (f64::from(exponent) * 3.0 / 10.0) as i64 - 1;
        let fits = || {
            let value = num.parse::<i64>().ok()?;
            value.checked_mul(1i64.checked_shl(u32::try_from(exponent).ok()?)?)
        };
        return if exponent >= 0 && frac_part.is_empty() && precision >= 0 && fits().is_some() {
            0
        } else {
            -9
        };
    }
    let scale = i64::from(exponent) - frac_part.len() as i64;
    if length <= 18 && scale >= -9 {
        scale
    } else {
        -9
    }
}

/// Value in nanos of `mantissa × base^exponent / 10^frac`, rounded away from zero past nano;
/// `None` when it does not fit in 128 bits. The exponents are combined in 64 bits, which
/// cannot overflow (a 32-bit exponent, a digit count, and 9).
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
        value.checked_mul(scale)
    } else {
        match u32::try_from(-e10).ok().and_then(pow10) {
            Some(p) => Some(div_away(value, p)),
            // Smaller than one nano: rounds up to one, as upstream rounds up past nano.
            None => Some(i128::from(value != 0)),
        }
    }
}

/// A binary-suffixed value of more than 38 digits (`digits × 2^exponent / 10^frac`), in big
/// integers; `None` past 128 bits.
fn big_binary_to_nanos(digits: &str, exponent: i32, frac: i64) -> Option<Option<i128>> {
    let mut value: BigInt = digits.parse().ok()?;
    value <<= u32::try_from(exponent).ok()?;
    let e10 = 9 - frac;
    let len = digits.len() as i64;
    if len + e10 < 0 {
        return Some(Some(1));
    }
    if len - 1 + e10 > 40 {
        return Some(None);
    }
    let scaled = if e10 >= 0 {
        value * big_pow10(e10 as u64)
    } else {
        let divisor = big_pow10(e10.unsigned_abs());
        let (quotient, remainder) = (&value / &divisor, &value % &divisor);
        if remainder.sign() == Sign::NoSign {
            quotient
        } else {
            quotient + 1
        }
    };
    Some(i128::try_from(scaled).ok())
}

/// The decimal `digits × 10^e10` nanos (no leading zeros, not all zero), rounded up past nano;
/// `None` past [`MAX_DIGITS`].
fn big_decimal(digits: &str, e10: i64) -> Option<Amount> {
    let value: BigInt = digits.parse().ok()?;
    if e10 >= 0 {
        return Amount::from_parts(value, e10);
    }
    let len = digits.len() as i64;
    if len + e10 < 0 {
        // Below one nano: rounds up to one.
        return Some(Amount::Nanos(1));
    }
    let divisor = big_pow10(e10.unsigned_abs());
    let (quotient, remainder) = (&value / &divisor, &value % &divisor);
    let rounded = if remainder.sign() == Sign::NoSign {
        quotient
    } else {
        quotient + 1
    };
    Amount::from_parts(rounded, 0)
}

/// `(base is 2, exponent, format)` for a suffix. A decimal exponent is read as 64 bits and
/// kept as its low 32, as upstream's `interpret` does.
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
            let wide: i64 = exp.parse().ok()?;
            Some((false, wide as i32, Format::DecimalExponent))
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mantissa, exp) = match &self.amount {
            Amount::Nanos(0) => return f.write_str("0"),
            Amount::Nanos(nanos) => {
                let whole = nanos % NANO == 0;
                if self.format == Format::BinarySI && nanos.abs() >= 1024 * NANO && whole {
                    let mut value = nanos / NANO;
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
                let (mut mantissa, mut exp) = (*nanos, -9i64);
                while mantissa % 10 == 0 {
                    mantissa /= 10;
                    exp += 1;
                }
                (mantissa.to_string(), exp)
            }
            // Above 10^24 (beyond 2^63-1, so never binary to upstream either): decimal.
            Amount::Big { mantissa, exp } => (mantissa.to_string(), exp - 9),
        };
        // The exponent a multiple of three, the mantissa taking the difference.
        let (zeros, exp) = match exp.rem_euclid(3) {
            1 => ("0", exp - 1),
            2 => ("00", exp - 2),
            _ => ("", exp),
        };
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
        write!(f, "{mantissa}{zeros}{suffix}")
    }
}

/// The values upstream's LimitRanger compared before 1.38: milli precision when all three
/// fit, else units; `None` when one is above 10^24 (those releases wrapped such a value through
/// 64 bits; confgate compares it exactly instead).
pub fn comparable(a: &Quantity, b: &Quantity, c: &Quantity) -> Option<(i128, i128, i128)> {
    if !(a.is_small() && b.is_small() && c.is_small()) {
        return None;
    }
    let (va, vb, vc) = (a.value(), b.value(), c.value());
    Some(
        if va <= MAX_MILLI_VALUE && vb <= MAX_MILLI_VALUE && vc <= MAX_MILLI_VALUE {
            (a.milli_value(), b.milli_value(), c.milli_value())
        } else {
            (va, vb, vc)
        },
    )
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
    fn huge_values_are_exact_never_wrapped_or_refused() {
        let q = |s| Quantity::parse(s).unwrap();
        // Printed in upstream's canonical form, from a mantissa and an exponent.
        for (input, canonical) in [
            ("1e2147483647", "10e2147483646"),
            ("3e2147483647", "30e2147483646"),
            ("1E2147483647", "10e2147483646"),
            ("1e25", "10e24"),
            ("1e10000000", "10e9999999"),
            (
                "1000000000000000000000000001",
                "1000000000000000000000000001",
            ),
            (
                "123456789012345678901234567890123456789012",
                "123456789012345678901234567890123456789012",
            ),
            (
                "1234567890123456789012345678901234567890e-5",
                "12345678901234567890123456789012345678900e-6",
            ),
            ("-1e30", "-1e30"),
            ("2000000000000000000000000000000000000E", "2e54"),
        ] {
            assert_eq!(q(input).to_string(), canonical, "{input}");
        }
        // Compared by magnitude, exactly.
        assert!(q("1e2147483647") > q("1e24"));
        assert!(q("3e2147483647") > q("1e2147483647"));
        assert!(q("-1e2147483647") < q("-1e24"));
        assert!(q("-1e2147483647") < q("0"));
        assert_eq!(q("1e25"), q("10000000000000000000000000"));
        assert_eq!(q("10e2147483646"), q("1e2147483647"));
        assert!(q("1000000000000000000000000001") > q("1e27"));
        assert!(q("1e10000000") > q("999999999999999999999999999999999999999999999999"));
        // More than 38 digits, brought into range by the exponent: held in 128 bits.
        assert_eq!(
            q("1000000000000000000000000000.00000000000e-3").value(),
            10i128.pow(24)
        );
        assert_eq!(
            q("1234567890123456789012345678901234567890e-30").milli_value(),
            1_234_567_890_124
        );
        assert_eq!(q("1e24").value(), MAX_UNITS);
        assert!(q("1e24").is_small() && !q("1e25").is_small());
        // Tiny values round up to one nano.
        assert_eq!(q("1e-2147483648").to_string(), "1e-9");
        // The exponent is read in 64 bits and kept as its low 32, as upstream's interpret does.
        assert_eq!(q("1e4294967296"), q("1"));
        assert_eq!(q("1e4294967297").to_string(), "10");
        assert!(Quantity::parse("1e9223372036854775808").is_err());
        // Past the digit budget: refused, never another number.
        let long = format!("1{}", "0".repeat(MAX_DIGITS as usize));
        assert_eq!(
            Quantity::parse(&long),
            Err(QuantityError::OutOfRange(long.clone()))
        );
        let budget = format!("1{}1", "0".repeat(MAX_DIGITS as usize - 2));
        assert!(Quantity::parse(&budget).is_ok());
    }

    #[test]
    fn long_values_cost_no_more_than_their_digits() {
        let q = |s: &str| Quantity::parse(s).unwrap();
        // 99,990 trailing zeros go into the exponent at once.
        let long = format!("1{}", "0".repeat(99_990));
        assert_eq!(q(&long), q("1e99990"));
        assert_eq!(q(&long).to_string(), "1e99990");
        assert_eq!(q(&long).add(&q(&long)), q("2e99990"));
        // Scales alike (both nano) but magnitudes far apart: the ratio folds rather than
        // writing out two billion digits.
        let huge = format!("1{}e2000000000", "0".repeat(20));
        assert_eq!(ratio_string(&q(&huge), &q("1n")), "1.000000e2000000029");
    }

    #[test]
    fn sums_are_exact_up_to_the_digit_budget() {
        let q = |s| Quantity::parse(s).unwrap();
        assert_eq!(
            q("1e30").add(&q("1")).to_string(),
            "1000000000000000000000000000001"
        );
        assert_eq!(q("1e2147483647").add(&q("2e2147483647")), q("3e2147483647"));
        assert_eq!(q("1e30").add(&q("-1e30")).to_string(), "0");
        assert_eq!(q("0").add(&q("1e2147483647")), q("1e2147483647"));
        assert_eq!(
            q("1e2147483647").checked_add(&q("0")),
            Some(q("1e2147483647"))
        );
        assert_eq!(q("-1e30").add(&q("1e30")).add(&q("1")), q("1"));
        // Beyond: not representable, so the checked sum says so.
        assert_eq!(q("1e100001").checked_add(&q("1n")), None);
        assert_eq!(q("1e100001").add(&q("1n")), q("1e100001"));
        assert!(q("1e99980").checked_add(&q("1")).is_some());
    }

    #[test]
    fn ratios_of_huge_values_are_exact_and_fold_past_a_scale_difference_of_40() {
        let q = |s| Quantity::parse(s).unwrap();
        assert!(exceeds_ratio(
            &q("3e2147483647"),
            &q("1e2147483647"),
            &q("2")
        ));
        assert!(!exceeds_ratio(
            &q("2e2147483647"),
            &q("1e2147483647"),
            &q("2")
        ));
        assert!(exceeds_ratio(
            &q("1e2147483647"),
            &q("1"),
            &q("1e2147483646")
        ));
        assert!(!exceeds_ratio(
            &q("1e2147483647"),
            &q("1"),
            &q("1e2147483647")
        ));
        assert!(exceeds_ratio(
            &q("2000000000000000000000000000001"),
            &q("1e30"),
            &q("2")
        ));
        assert_eq!(
            ratio_string(&q("3e2147483647"), &q("1e2147483647")),
            "3.000000"
        );
        // Scales 40 apart print in full, 50 apart with an exponent.
        assert_eq!(
            ratio_string(&q("1e40"), &q("1")),
            format!("1{}.000000", "0".repeat(40))
        );
        assert_eq!(ratio_string(&q("1e50"), &q("1")), "1.000000e50");
        assert_eq!(ratio_string(&q("1"), &q("1e50")), "1.000000e-50");
        assert_eq!(
            ratio_string(&q("2e2147483647"), &q("3")),
            "6.666667e2147483646"
        );
        // The mantissa rounds to ten: one more in the exponent.
        assert_eq!(ratio_string(&q("99999999e50"), &q("1")), "1.000000e58");
        // The scales of how they were written decide, not their values: 1e50 written out has
        // upstream's nano scale.
        let written = format!("1{}", "0".repeat(50));
        assert_eq!(
            ratio_string(&q(&written), &q("1")),
            format!("1{}.000000", "0".repeat(50))
        );
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
        assert!(rounded_ratio_exceeds(10i128.pow(22), 10i128.pow(20), 10));
        assert!(!rounded_ratio_exceeds(10i128.pow(21), 10i128.pow(20), 10));
        assert!(rounded_ratio_exceeds(MAX_UNITS, 1, MAX_UNITS - 1));
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

        /// The exact value in nanos.
        fn exact_nanos(negative: bool, int: &str, frac: &str, suffix: &str) -> BigInt {
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
            if negative { -rounded } else { rounded }
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
                let q = Quantity::parse(&text).unwrap();
                let (mantissa, exp) = q.parts();
                let expected = exact_nanos(negative, &int, &frac, &suffix);
                prop_assert_eq!(mantissa * BigInt::from(10).pow(exp as u32), expected.clone(), "{}", text);
                // Equal to, and ordered like, the exact value held in 128 bits or not.
                let plain = Quantity::parse(&format!("{expected}n")).unwrap();
                prop_assert_eq!(&q, &plain, "{}", text);
            }
        }
    }
}
