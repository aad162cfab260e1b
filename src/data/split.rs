//! The three parts of a data set.

use crate::error::{quoted, Error, Result};
use std::fmt;

/// Which part of a data set an example belongs to. Karpathy's `restval` (the part of COCO's
/// validation images his split gives to training) reads as `Train`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// The name in a Karpathy file: `train`, `val` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    /// A small number per split, mixed into seeds.
    pub(crate) fn tag(self) -> u64 {
        match self {
            Split::Train => 1,
            Split::Val => 2,
            Split::Test => 3,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Split {
    type Err = Error;

    /// `train`, `restval` (as train), `val` or `test`.
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "train" | "restval" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => Err(Error::Config(format!(
                "unknown split {} (expected train, restval, val or test)",
                quoted(name)
            ))),
        }
    }
}

/// splitmix64's finaliser: a well-mixed 64-bit value from any input (seeds per example).
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of example `index` of `split` under `seed`: a pure function of the three.
pub(crate) fn example_seed(seed: u64, split: Split, index: u64) -> u64 {
    mix(mix(mix(seed) ^ split.tag()) ^ index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_ones_are_errors() {
        for s in Split::ALL {
            assert_eq!(s.name().parse::<Split>().unwrap(), s);
        }
        assert_eq!("restval".parse::<Split>().unwrap(), Split::Train);
        let e = "dev\n".parse::<Split>().unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown split `dev\\n` (expected train, restval, val or test)"
        );
    }

    #[test]
    fn example_seeds_differ_by_seed_split_and_index() {
        let a = example_seed(1, Split::Train, 0);
        assert_ne!(a, example_seed(2, Split::Train, 0));
        assert_ne!(a, example_seed(1, Split::Test, 0));
        assert_ne!(a, example_seed(1, Split::Train, 1));
        assert_eq!(a, example_seed(1, Split::Train, 0));
    }
}
