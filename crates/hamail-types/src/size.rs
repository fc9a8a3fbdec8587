//! Byte sizes as operators write them (`100M`, `2G`, `10485760`): mailbox
//! quotas and per-domain message size limits. Suffixes are binary
//! (K = 1024), as Postfix's and Dovecot's sizes are.

use crate::TypesError;

/// The largest size accepted (1 PiB): far past any mailbox, and small
/// enough that sums of sizes stay far from overflow.
pub const MAX_BYTE_SIZE: u64 = 1 << 50;

/// Parses `N`, `NK`, `NM`, `NG` or `NT` (case-insensitive, an optional
/// trailing `B` or `iB`: `100MB`, `100MiB`). Zero and sizes above
/// [`MAX_BYTE_SIZE`] are refused.
pub fn parse_byte_size(input: &str) -> Result<u64, TypesError> {
    let bad = |reason: &str| TypesError::Size {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let s = input.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad("expected a number of bytes, e.g. 10485760, 100M or 2G"));
    }
    let (number, suffix) = s.split_at(digits);
    let suffix = suffix.trim().to_ascii_uppercase();
    let unit = suffix
        .strip_suffix("IB")
        .or_else(|| suffix.strip_suffix('B'))
        .unwrap_or(&suffix);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad("unknown unit: use K, M, G or T (powers of 1024)")),
    };
    let n: u64 = number.parse().map_err(|_| bad("the number is too large"))?;
    if n == 0 {
        return Err(bad("a size must be above zero"));
    }
    match n.checked_mul(1u64 << shift) {
        Some(v) if v <= MAX_BYTE_SIZE => Ok(v),
        _ => Err(bad("larger than 1 PiB")),
    }
}

/// A size for people: the largest unit that divides it exactly (`100M`),
/// else the number of bytes.
pub fn format_byte_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_byte_size("10485760").unwrap(), 10 << 20);
        assert_eq!(parse_byte_size("100M").unwrap(), 100 << 20);
        assert_eq!(parse_byte_size("100m").unwrap(), 100 << 20);
        assert_eq!(parse_byte_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_byte_size("2GB").unwrap(), 2 << 30);
        assert_eq!(parse_byte_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_byte_size("512K").unwrap(), 512 << 10);
        assert_eq!(parse_byte_size("1T").unwrap(), 1 << 40);
        assert_eq!(format_byte_size(100 << 20), "100M");
        assert_eq!(format_byte_size(1500), "1500");
        assert_eq!(format_byte_size(3 << 30), "3G");
    }

    #[test]
    fn bad_sizes_are_refused_with_the_input_named() {
        for bad in [
            "",
            "M",
            "-1",
            "0",
            "0M",
            "1.5G",
            "10X",
            "99999999999999999999",
            "2048T",
            "1 PB",
        ] {
            let e = parse_byte_size(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }
}
