//! Log-linear latency buckets: exact below 32 ns, then 16 buckets per power of two, so a bucket
//! is at most 1/16 of its lower bound wide and its midpoint is within 3.2% of any value in it.
//! The kernel only computes [`bucket_index`]; the agent maps indices back to bounds.

const SUB_BUCKET_BITS: u32 = 4;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// Largest exponent with its own buckets: 2^41 ns is about 36 minutes; longer calls clamp.
const MAX_EXPONENT: u32 = 40;

pub const BUCKETS: usize = ((MAX_EXPONENT - SUB_BUCKET_BITS + 2) as usize) * SUB_BUCKETS as usize;

/// The bucket holding a duration of `ns` nanoseconds.
#[inline(always)]
pub fn bucket_index(ns: u64) -> usize {
    if ns < SUB_BUCKETS {
        return ns as usize;
    }
    let exponent = 63 - ns.leading_zeros();
    if exponent > MAX_EXPONENT {
        return BUCKETS - 1;
    }
    let sub = (ns >> (exponent - SUB_BUCKET_BITS)) & (SUB_BUCKETS - 1);
    ((exponent - SUB_BUCKET_BITS + 1) as usize) * SUB_BUCKETS as usize + sub as usize
}

/// Lower (inclusive) and upper (exclusive) bounds of a bucket, in nanoseconds.
pub fn bucket_bounds(index: usize) -> (u64, u64) {
    let sub_buckets = SUB_BUCKETS as usize;
    if index < sub_buckets {
        return (index as u64, index as u64 + 1);
    }
    let shift = (index / sub_buckets - 1) as u32;
    let sub = (index % sub_buckets) as u64;
    let lower = (SUB_BUCKETS + sub) << shift;
    (lower, lower + (1 << shift))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_inside_its_bucket() {
        let mut ns = 0u64;
        while ns < (1 << MAX_EXPONENT) {
            let (lower, upper) = bucket_bounds(bucket_index(ns));
            assert!(lower <= ns && ns < upper, "{ns} outside [{lower}, {upper})");
            ns = ns * 9 / 8 + 1;
        }
    }

    #[test]
    fn buckets_are_contiguous_and_fine() {
        for index in 1..BUCKETS {
            let (lower, upper) = bucket_bounds(index);
            assert_eq!(bucket_bounds(index - 1).1, lower);
            assert!(
                (upper - lower) * 16 <= lower.max(16),
                "bucket {index} too wide"
            );
        }
    }

    #[test]
    fn huge_values_clamp_to_the_last_bucket() {
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
    }
}
