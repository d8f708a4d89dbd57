//! Test subnets: a third octet of `10.199.<n>.0/24` reserved for one test, across every test process, for as long as its lease lives.

use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::ops::RangeInclusive;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};

/// Octets random test subnets are leased from. Tests that pick a fixed octet use 100 and
/// above, so the two never meet.
pub const RANDOM_SUBNET_OCTETS: RangeInclusive<u8> = 1..=99;

/// A reserved `10.199.<octet>.0/24`: an exclusive `flock` on a file under the temp dir,
/// which the kernel releases when the lease is dropped or its process dies (so a crashed
/// test never keeps an octet).
#[derive(Debug)]
pub struct SubnetLease {
    octet: u8,
    _lock: Flock<File>,
}

impl SubnetLease {
    /// The reserved third octet.
    pub fn octet(&self) -> u8 {
        self.octet
    }
}

/// Reserves a free octet of [`RANDOM_SUBNET_OCTETS`], starting the search at a random one.
/// Panics (this is test code) when every octet is taken or the lock directory cannot be
/// made.
pub fn lease_subnet() -> SubnetLease {
    let dir = std::env::temp_dir().join("converge-test-subnets");
    std::fs::create_dir_all(&dir).expect("cannot create the test subnet lock directory");
    let (low, high) = (*RANDOM_SUBNET_OCTETS.start(), *RANDOM_SUBNET_OCTETS.end());
    let count = u64::from(high - low) + 1;
    let start = RandomState::new().hash_one(crate::unique_name("subnet")) % count;
    for step in 0..count {
        let octet = low + u8::try_from((start + step) % count).expect("octet in range");
        if let Some(lock) = try_lock(dir.join(format!("10.199.{octet}.lock"))) {
            return SubnetLease { octet, _lock: lock };
        }
    }
    panic!("every test subnet octet in {RANDOM_SUBNET_OCTETS:?} is leased");
}

fn try_lock(path: PathBuf) -> Option<Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("cannot open a test subnet lock file");
    Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leases_held_at_once_never_share_an_octet() {
        let leases: Vec<SubnetLease> = (0..20).map(|_| lease_subnet()).collect();
        let mut octets: Vec<u8> = leases.iter().map(SubnetLease::octet).collect();
        octets.sort_unstable();
        octets.dedup();
        assert_eq!(octets.len(), leases.len());
    }
}
