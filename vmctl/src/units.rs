//! Sizes and rates as people write them in descriptors ("256M", "4G",
//! "50M") and as vmctl prints them, so that every message uses one style.

/// Parses a memory size ("256M", "4G", "512MiB", "1T") into MiB, rounding
/// up. Binary units; the suffix is required so that "256" is never
/// silently read as bytes or MiB.
pub fn parse_mem_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = split_unit(t);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (write e.g. \"256M\" or \"4G\")"))?;
    let unit = unit
        .trim_end_matches(['B', 'b'])
        .trim_end_matches('i')
        .to_ascii_uppercase();
    let kib = match unit.as_str() {
        "K" => n,
        "M" => n * 1024.0,
        "G" => n * 1024.0 * 1024.0,
        "T" => n * 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "{s:?} needs a unit K, M, G or T (write e.g. \"256M\" or \"4G\")"
            ))
        }
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("{s:?} must be more than zero"));
    }
    let mib = (kib / 1024.0).ceil();
    if mib > MAX_MEM_MIB as f64 {
        return Err(format!(
            "{s:?} is more memory than a node can have (at most 1024T)"
        ));
    }
    Ok(mib as u64)
}

/// The most memory a size may name (1024 TiB, in MiB): past any machine,
/// and small enough that the scheduler's sums never overflow.
const MAX_MEM_MIB: u64 = 1 << 30;

/// The most bandwidth a rate may name (1,000,000 Gbit/s, in Mbit/s), for
/// the same reasons.
const MAX_BW_MBIT: u64 = 1_000_000_000;

/// Parses a bandwidth ("50M", "1G", "800K" bits per second, decimal units)
/// into Mbit/s, rounding up.
pub fn parse_bw_mbit(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = split_unit(t);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a bandwidth (write e.g. \"50M\" or \"1G\")"))?;
    let unit = unit
        .trim_end_matches("bit/s")
        .trim_end_matches("bps")
        .to_ascii_uppercase();
    let mbit = match unit.as_str() {
        "K" => n / 1000.0,
        "M" => n,
        "G" => n * 1000.0,
        _ => {
            return Err(format!(
                "{s:?} needs a unit K, M or G (bits per second, e.g. \"50M\")"
            ))
        }
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("{s:?} must be more than zero"));
    }
    if mbit.ceil() > MAX_BW_MBIT as f64 {
        return Err(format!(
            "{s:?} is more bandwidth than a link can have (at most 1000000G)"
        ));
    }
    Ok(mbit.ceil() as u64)
}

fn split_unit(t: &str) -> (&str, &str) {
    let at = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    (&t[..at], t[at..].trim())
}

/// Formats MiB for people: "4 GiB", "1.5 GiB", "256 MiB".
pub fn fmt_mib(mib: u64) -> String {
    if mib >= 1024 && mib % 1024 == 0 {
        format!("{} GiB", mib / 1024)
    } else if mib >= 1024 {
        format!("{:.1} GiB", mib as f64 / 1024.0)
    } else {
        format!("{mib} MiB")
    }
}

/// Formats a count of CPUs: "1 CPU", "4 CPUs".
pub fn fmt_cpus(n: u64) -> String {
    if n == 1 {
        "1 CPU".into()
    } else {
        format!("{n} CPUs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_mem_mib("256M").unwrap(), 256);
        assert_eq!(parse_mem_mib("4G").unwrap(), 4096);
        assert_eq!(parse_mem_mib("512MiB").unwrap(), 512);
        assert_eq!(parse_mem_mib("1.5G").unwrap(), 1536);
        assert_eq!(parse_mem_mib("1000K").unwrap(), 1);
        assert!(parse_mem_mib("256").unwrap_err().contains("unit"));
        assert!(parse_mem_mib("lots").is_err());
        assert!(parse_mem_mib("0M").is_err());
        assert_eq!(fmt_mib(4096), "4 GiB");
        assert_eq!(fmt_mib(3072 + 512), "3.5 GiB");
        assert_eq!(fmt_mib(300), "300 MiB");
    }

    #[test]
    fn sizes_and_rates_past_any_machine_are_refused() {
        // Saturated to u64::MAX, they passed validation and overflowed the
        // scheduler's sums.
        let e = parse_mem_mib("99999999999999999999T").unwrap_err();
        assert!(e.contains("at most 1024T"), "{e}");
        assert_eq!(parse_mem_mib("1024T").unwrap(), 1 << 30);
        let e = parse_bw_mbit("99999999999999999999G").unwrap_err();
        assert!(e.contains("at most 1000000G"), "{e}");
    }

    #[test]
    fn rates() {
        assert_eq!(parse_bw_mbit("50M").unwrap(), 50);
        assert_eq!(parse_bw_mbit("1G").unwrap(), 1000);
        assert_eq!(parse_bw_mbit("200Mbit/s").unwrap(), 200);
        assert!(parse_bw_mbit("fast").is_err());
    }
}
