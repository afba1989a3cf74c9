//! Independent work items mapped over the machine's cores, results in the items' order: the
//! compression of many tensors, the hashing of a checkpoint's tensors, the statistics and
//! histograms of a large activation.
//!
//! Each item is one call of the function on one thread, so the results are the sequential
//! ones whatever the number of threads. Kernels that split one output buffer between threads
//! (`kernels::par_chunks`, the convolution's task queue) have another shape and do not use this.

use std::sync::atomic::{AtomicUsize, Ordering};

/// `f` of every item, in order, on up to `available_parallelism` threads, largest item (by
/// `len`) first.
pub(crate) fn parallel_map<T, R, L, F>(items: &[T], len: L, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    L: Fn(&T) -> usize,
    F: Fn(&T) -> R + Sync,
{
    parallel_map_on(crate::kernels::num_threads(), items, len, f)
}

/// [`parallel_map`] on at most `threads` threads; with one (or one item) it runs on the calling
/// thread. A panic in `f` is resumed on the calling thread with its own message.
pub(crate) fn parallel_map_on<T, R, L, F>(threads: usize, items: &[T], len: L, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    L: Fn(&T) -> usize,
    F: Fn(&T) -> R + Sync,
{
    let threads = threads.min(items.len());
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    // Big items first so that no thread is left with a big one at the end; items are claimed
    // one at a time, so one large item does not hold up the rest.
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
            let done = w.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            for (i, r) in done {
                results[i] = Some(r);
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.expect("every item is processed"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_in_item_order_for_any_thread_count() {
        // Uneven sizes, so the largest-first order differs from the items' order.
        let items: Vec<usize> = (0..50).map(|i| (i * 37) % 11).collect();
        let want: Vec<usize> = items.iter().map(|&x| x * x + 1).collect();
        for threads in [0, 1, 2, 3, 8, 100] {
            assert_eq!(
                parallel_map_on(threads, &items, |&x| x, |&x| x * x + 1),
                want,
                "{threads} threads"
            );
        }
        assert_eq!(parallel_map(&items, |&x| x, |&x| x * x + 1), want);
        assert!(parallel_map(&[] as &[u8], |_| 0, |&x| x).is_empty());
    }

    #[test]
    fn every_item_is_mapped_once() {
        let calls = AtomicUsize::new(0);
        let items: Vec<u32> = (0..1000).collect();
        let out = parallel_map_on(
            4,
            &items,
            |_| 1,
            |&x| {
                calls.fetch_add(1, Ordering::Relaxed);
                x
            },
        );
        assert_eq!(out, items);
        assert_eq!(calls.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn a_panic_keeps_its_message() {
        let items = [1, 2, 3, 4];
        let caught = std::panic::catch_unwind(|| {
            parallel_map_on(
                2,
                &items,
                |_| 0,
                |&x| {
                    assert_ne!(x, 3, "item three is bad");
                    x
                },
            )
        })
        .unwrap_err();
        let msg = caught.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("item three is bad"), "{msg}");
    }
}
