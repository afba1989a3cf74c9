//! Work spread over the machine's cores: compression handles many independent tensors or
//! layers, each costly enough to be a thread's unit of work.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Maps `f` over `items` on up to `available_parallelism` threads, largest (by `len`) first.
pub(crate) fn parallel_map<T, R, L, F>(items: &[T], len: L, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    L: Fn(&T) -> usize,
    F: Fn(&T) -> R + Sync,
{
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    // Big tensors first so that no thread is left with a big one at the end.
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(len(&items[i])));
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let slot = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = order.get(slot) else { break };
                        done.push((i, f(&items[i])));
                    }
                    done
                })
            })
            .collect();
        for w in workers {
            for (i, p) in w.join().expect("a worker panicked") {
                results[i] = Some(p);
            }
        }
    });
    results
        .into_iter()
        .map(|p| p.expect("every item is processed"))
        .collect()
}
