//! The physical limit of password logins: how many argon2id hashes per second
//! these cores compute with the server's parameters on as many threads as the
//! server's hashing pool has. Every login verifies one hash and every
//! registration computes one, and verification costs the same as hashing
//! (same memory, same passes), so neither can go faster than this.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use authd_core::password::{Argon2Params, hash_password};

#[derive(Clone, Copy, Debug)]
pub struct Ceiling {
    pub hashes: u64,
    pub per_sec: f64,
}

/// Hashes on `threads` OS threads for about `duration`. Blocking: call it
/// from `spawn_blocking` (or outside the runtime).
pub fn measure(
    params: Argon2Params,
    threads: usize,
    duration: Duration,
) -> anyhow::Result<Ceiling> {
    let threads = threads.max(1);
    let barrier = Barrier::new(threads);
    let per_thread: Vec<anyhow::Result<(u64, Duration)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                scope.spawn(move || -> anyhow::Result<(u64, Duration)> {
                    // One untimed hash first: the first touch of the memory
                    // block costs page faults a warm server no longer pays.
                    hash_password(&params, "load-test ceiling password")?;
                    barrier.wait();
                    let started = Instant::now();
                    let mut n = 0u64;
                    while started.elapsed() < duration {
                        hash_password(&params, "load-test ceiling password")?;
                        n += 1;
                    }
                    Ok((n, started.elapsed()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a hashing thread panicked")))
            })
            .collect()
    });
    let mut hashes = 0;
    let mut per_sec = 0.0;
    for r in per_thread {
        let (n, elapsed) = r?;
        hashes += n;
        // Each thread's own rate, summed: a thread's last hash ends a little
        // after the deadline, and dividing by its own time accounts for that.
        per_sec += n as f64 / elapsed.as_secs_f64().max(f64::EPSILON);
    }
    Ok(Ceiling { hashes, per_sec })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheap_parameters_hash_many_times_a_second() {
        let params = Argon2Params {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let c = measure(params, 2, Duration::from_millis(200)).unwrap();
        assert!(c.hashes > 2, "{c:?}");
        assert!(c.per_sec > 10.0, "{c:?}");
    }
}
