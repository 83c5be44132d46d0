//! The physical limit of password logins: how many argon2id hashes per second
//! these cores compute with the server's parameters on as many threads as the
//! server's hashing pool has. Every login verifies one hash and every
//! registration computes one, and verification costs the same as hashing
//! (same memory, same passes), so neither can go faster than this.
//!
//! Two ways to hash, chosen by [`Mode`]:
//! - `raw` (the default): argon2id into a memory block each thread allocates
//!   once, which is the cost of the algorithm alone.
//! - `authd`: [`authd_core::password::hash_password`], the server's own call,
//!   which allocates the block (19 MiB by default) on every call. With
//!   glibc's allocator a fresh thread then hands the memory back to the
//!   kernel after each hash and takes a page fault on every 4 KiB of it the
//!   next time (4,864 faults, some 40% more CPU per hash on the 2-core dev
//!   machine); the server's long-lived pool threads pay that on only some of
//!   their hashes. So this mode is a pessimistic ceiling: a login/ceiling
//!   ratio above 1 in it says the ceiling, not the server, was slow.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use argon2::{Algorithm, Argon2, Block, Version};
use authd_core::password::{Argon2Params, hash_password};

use crate::cpu;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// argon2id into memory allocated once per thread: the algorithm's cost.
    Raw,
    /// authd's `hash_password`, allocating on every call as the server does.
    Authd,
}

#[derive(Clone, Copy, Debug)]
pub struct Ceiling {
    pub hashes: u64,
    /// Hashes per second of wall time, all threads together.
    pub per_sec: f64,
    /// CPU time of the process per hash (Linux only): far less sensitive
    /// than `per_sec` to what else the machine runs.
    pub cpu_ms_per_hash: Option<f64>,
}

const PASSWORD: &str = "load-test ceiling password";

/// One thread's hasher: hashes one password per call.
enum Hasher {
    Raw { argon2: Argon2<'static>, memory: Vec<Block>, out: [u8; 32] },
    Authd(Argon2Params),
}

impl Hasher {
    fn new(mode: Mode, params: Argon2Params) -> anyhow::Result<Self> {
        Ok(match mode {
            Mode::Raw => {
                let p = argon2::Params::new(params.memory_kib, params.iterations, params.parallelism, None)
                    .map_err(|e| anyhow!("argon2 parameters {params:?}: {e}"))?;
                let memory = vec![Block::default(); p.block_count()];
                Self::Raw { argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, p), memory, out: [0; 32] }
            }
            Mode::Authd => Self::Authd(params),
        })
    }

    fn hash(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Raw { argon2, memory, out } => {
                // A fixed salt: the cost does not depend on its value.
                argon2
                    .hash_password_into_with_memory(PASSWORD.as_bytes(), b"authd-load-salt!", out, &mut memory[..])
                    .map_err(|e| anyhow!("argon2 hashing failed: {e}"))
            }
            Self::Authd(params) => hash_password(params, PASSWORD).map(|_| ()).map_err(Into::into),
        }
    }
}

/// Hashes on `threads` OS threads for about `duration`. Blocking: call it
/// from `spawn_blocking` (or outside the runtime).
pub fn measure(mode: Mode, params: Argon2Params, threads: usize, duration: Duration) -> anyhow::Result<Ceiling> {
    let threads = threads.max(1);
    // The threads and this one: CPU time is read when all are warm.
    let start = Barrier::new(threads + 1);
    let (cpu_started, per_thread) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let start = &start;
                scope.spawn(move || -> anyhow::Result<(u64, Duration)> {
                    let hasher = Hasher::new(mode, params);
                    // One untimed hash first: the first touch of the memory
                    // costs page faults a warm server no longer pays.
                    let warm = hasher.and_then(|mut h| h.hash().map(|()| h));
                    start.wait();
                    let mut hasher = warm?;
                    let started = Instant::now();
                    let mut n = 0u64;
                    while started.elapsed() < duration {
                        hasher.hash()?;
                        n += 1;
                    }
                    Ok((n, started.elapsed()))
                })
            })
            .collect();
        start.wait();
        let cpu_started = cpu::process_ns();
        let results: Vec<anyhow::Result<(u64, Duration)>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a hashing thread panicked"))))
            .collect();
        (cpu_started, results)
    });
    let cpu_ns = cpu_started.zip(cpu::process_ns()).map(|(a, b)| b.saturating_sub(a));
    let mut hashes = 0;
    let mut per_sec = 0.0;
    for r in per_thread {
        let (n, elapsed) = r?;
        hashes += n;
        // Each thread's own rate, summed: a thread's last hash ends a little
        // after the deadline, and dividing by its own time accounts for that.
        per_sec += n as f64 / elapsed.as_secs_f64().max(f64::EPSILON);
    }
    let cpu_ms_per_hash = cpu_ns.filter(|_| hashes > 0).map(|ns| ns as f64 / 1e6 / hashes as f64);
    Ok(Ceiling { hashes, per_sec, cpu_ms_per_hash })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheap_parameters_hash_many_times_a_second() {
        let params = Argon2Params { memory_kib: 64, iterations: 1, parallelism: 1 };
        for mode in [Mode::Raw, Mode::Authd] {
            let c = measure(mode, params, 2, Duration::from_millis(200)).unwrap();
            assert!(c.hashes > 2, "{mode:?}: {c:?}");
            assert!(c.per_sec > 10.0, "{mode:?}: {c:?}");
        }
    }

    #[test]
    fn raw_hashing_matches_authd_verification() {
        // The raw mode must do the work a login does: same algorithm,
        // version and parameters give the same output as the PHC hash.
        let params = Argon2Params { memory_kib: 64, iterations: 1, parallelism: 1 };
        let phc = hash_password(&params, PASSWORD).unwrap();
        let parsed = argon2::PasswordHash::new(&phc).unwrap();
        let salt = parsed.salt.unwrap();
        let p = argon2::Params::new(64, 1, 1, None).unwrap();
        let mut memory = vec![Block::default(); p.block_count()];
        let mut out = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
            .hash_password_into_with_memory(PASSWORD.as_bytes(), salt.as_ref(), &mut out, &mut memory[..])
            .unwrap();
        assert_eq!(parsed.hash.unwrap().as_bytes(), out);
    }
}
