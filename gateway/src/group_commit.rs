//! Group commit: requests that need their changes durable share commits.
//!
//! A caller has already applied its change; it needs a commit that *starts* after that
//! moment. If no commit is running it starts one; if one is running (it may have begun
//! before the caller's change), the caller waits for it to end and then for the next one,
//! which the first waiter starts on behalf of everyone who queued meanwhile. N concurrent
//! durable requests thus cost about two commits instead of N.
//!
//! Requests that are still applying their change when a commit is about to start (they
//! announced it with [`GroupCommit::begin_change`]) are waited for, up to
//! [`JOIN_WAIT`]: a commit holds the mount's mutex, so changes cannot be applied while one
//! runs, and without the wait the next commit would start the moment the previous one ended
//! and carry only the one or two changes that got the mutex first. A commit about to start
//! also waits, within the same bound, until as many callers have queued as the last commit
//! started with: with N clients each keeping a durable request in flight, the N answered
//! by one commit come back with their next requests, and the next commit should carry all
//! of them rather than the first one to arrive (one caller at a time waits for nobody).

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a commit about to start waits for announced changes to be applied.
pub const JOIN_WAIT: Duration = Duration::from_millis(2);

#[derive(Debug)]
struct State<E> {
    /// A commit is in progress.
    running: bool,
    /// Commits started so far (the generation of the newest one).
    started: u64,
    /// Commits finished so far: every generation up to it is done.
    done: u64,
    /// Recent failed generations and their error messages.
    failed: std::collections::BTreeMap<u64, E>,
    /// Callers applying a change they will then make durable.
    applying: usize,
    /// Callers waiting for the next commit to start (their target is `started + 1`).
    queued: usize,
    /// How many callers the last commit started with.
    last_batch: usize,
}

impl<E> Default for State<E> {
    fn default() -> Self {
        Self {
            running: false,
            started: 0,
            done: 0,
            failed: Default::default(),
            applying: 0,
            queued: 0,
            last_batch: 0,
        }
    }
}

/// Shares commits between concurrent callers; `E` is the commit's error.
#[derive(Debug)]
pub struct GroupCommit<E> {
    state: Mutex<State<E>>,
    finished: Condvar,
    join_wait: Duration,
}

impl<E: Clone> Default for GroupCommit<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: Clone> GroupCommit<E> {
    pub fn new() -> Self {
        Self::with_join_wait(JOIN_WAIT)
    }

    /// A group commit whose commits wait up to `join_wait` for callers to join.
    pub fn with_join_wait(join_wait: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            finished: Condvar::new(),
            join_wait,
        }
    }

    /// Announce a change that will be made durable: a commit about to start waits (briefly)
    /// until the returned guard is dropped, which the caller does once its change is applied,
    /// before it calls [`GroupCommit::commit`] (or when it gives up).
    pub fn begin_change(&self) -> ChangeGuard<'_, E> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .applying += 1;
        ChangeGuard { gc: self }
    }

    /// Make durable every change applied before this call, running `commit` or waiting for
    /// a commit another caller runs. A failed commit fails every caller that waited for it.
    pub fn commit(&self, commit: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // The first commit that can hold our change: the next one to start.
        let target = st.started + 1;
        st.queued += 1;
        self.finished.notify_all();
        let mut commit = Some(commit);
        loop {
            if st.done >= target {
                // Our change is in generation `target` exactly: no earlier one started
                // after it, and that one did.
                return match st.failed.get(&target) {
                    Some(msg) => Err(msg.clone()),
                    None => Ok(()),
                };
            }
            if !st.running {
                // Let changes being applied join this commit, and as many callers as the
                // last one served: they got their answers and are likely coming back.
                let deadline = Instant::now() + self.join_wait;
                while (st.applying > 0 || st.queued < st.last_batch) && !st.running {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    st = self
                        .finished
                        .wait_timeout(st, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                if st.running || st.done >= target {
                    // Another caller started (or finished) the commit meanwhile.
                    continue;
                }
                st.running = true;
                st.started += 1;
                st.last_batch = std::mem::take(&mut st.queued);
                let generation = st.started;
                drop(st);
                let run = commit.take().expect("a caller starts at most one commit");
                let result = run();
                st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                st.running = false;
                st.done = generation;
                if let Err(msg) = &result {
                    st.failed.insert(generation, msg.clone());
                }
                // Waiters of old generations are long gone.
                st.failed = st.failed.split_off(&generation.saturating_sub(1024));
                self.finished.notify_all();
                return result;
            }
            st = self.finished.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A change being applied (see [`GroupCommit::begin_change`]).
pub struct ChangeGuard<'a, E> {
    gc: &'a GroupCommit<E>,
}

impl<E> Drop for ChangeGuard<'_, E> {
    fn drop(&mut self) {
        let mut st = self.gc.state.lock().unwrap_or_else(|p| p.into_inner());
        st.applying -= 1;
        if st.applying == 0 {
            self.gc.finished.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    #[test]
    fn concurrent_callers_share_commits() {
        let gc = Arc::new(GroupCommit::<String>::new());
        let commits = Arc::new(AtomicU64::new(0));
        let n = 16;
        let barrier = Arc::new(Barrier::new(n));
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let (gc, commits, barrier) = (gc.clone(), commits.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    gc.commit(|| {
                        commits.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(30));
                        Ok::<(), String>(())
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let c = commits.load(Ordering::SeqCst);
        assert!((1..=3).contains(&c), "{n} callers ran {c} commits");
    }

    /// Changes applied under the same mutex the commit holds (as the mount's mutex): without
    /// waiting for announced changes each commit would carry one or two of them.
    #[test]
    fn announced_changes_being_applied_join_the_next_commit() {
        let gc = Arc::new(GroupCommit::<String>::new());
        let mount = Arc::new(Mutex::new(0u64));
        let commits = Arc::new(AtomicU64::new(0));
        let (threads, rounds) = (8, 10);
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (gc, mount, commits) = (gc.clone(), mount.clone(), commits.clone());
                std::thread::spawn(move || {
                    for _ in 0..rounds {
                        let change = gc.begin_change();
                        *mount.lock().unwrap() += 1;
                        drop(change);
                        gc.commit(|| {
                            let _m = mount.lock().unwrap();
                            commits.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(3));
                            Ok::<(), String>(())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let c = commits.load(Ordering::SeqCst);
        assert_eq!(*mount.lock().unwrap(), threads * rounds);
        assert!(
            c <= threads * rounds / 2,
            "{c} commits for {} changes",
            threads * rounds
        );
    }

    /// N callers each keeping one durable request in flight: the N a commit answered come
    /// back one by one, and the next commit waits (within its bound) until as many have
    /// queued, so it carries all of them instead of starting with the first.
    #[test]
    fn a_commit_waits_for_as_many_callers_as_the_last_one_served() {
        let gc = Arc::new(GroupCommit::<String>::with_join_wait(
            Duration::from_millis(500),
        ));
        let commits = Arc::new(AtomicU64::new(0));
        let count = |commits: &Arc<AtomicU64>| {
            let commits = commits.clone();
            move || {
                commits.fetch_add(1, Ordering::SeqCst);
                Ok::<(), String>(())
            }
        };
        // A long commit runs while four callers queue: the next commit starts with four.
        let (gc0, started) = (gc.clone(), Arc::new(Barrier::new(2)));
        let started0 = started.clone();
        let blocker = std::thread::spawn(move || {
            gc0.commit(|| {
                started0.wait();
                std::thread::sleep(Duration::from_millis(100));
                Ok::<(), String>(())
            })
        });
        started.wait();
        let four: Vec<_> = (0..4)
            .map(|_| {
                let (gc, c) = (gc.clone(), count(&commits));
                std::thread::spawn(move || gc.commit(c))
            })
            .collect();
        blocker.join().unwrap().unwrap();
        for t in four {
            t.join().unwrap().unwrap();
        }
        assert_eq!(
            commits.load(Ordering::SeqCst),
            1,
            "the four shared one commit"
        );
        // Now they come back 10 ms apart: still one commit.
        let again: Vec<_> = (0..4u64)
            .map(|i| {
                let (gc, c) = (gc.clone(), count(&commits));
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(10 * i));
                    gc.commit(c)
                })
            })
            .collect();
        for t in again {
            t.join().unwrap().unwrap();
        }
        assert_eq!(
            commits.load(Ordering::SeqCst),
            2,
            "callers coming back one by one joined one commit"
        );
        // One caller alone after that waits out the bound once, then runs at once again.
        gc.commit(count(&commits)).unwrap();
        let start = Instant::now();
        gc.commit(count(&commits)).unwrap();
        assert!(
            start.elapsed() < Duration::from_millis(400),
            "a lone caller waited"
        );
    }

    /// A caller that announced a change and gave up does not hold commits back for good.
    #[test]
    fn a_dropped_announcement_does_not_block_commits() {
        let gc = GroupCommit::<String>::new();
        let change = gc.begin_change();
        drop(change);
        let _pending = gc.begin_change();
        // One announcement stays open: the commit waits at most JOIN_WAIT, then runs.
        gc.commit(|| Ok::<(), String>(())).unwrap();
        gc.commit(|| Ok::<(), String>(())).unwrap();
    }

    /// A change made while a commit runs may have missed it: its caller must get a commit
    /// that starts later.
    #[test]
    fn a_caller_arriving_during_a_commit_waits_for_the_next_one() {
        let gc = Arc::new(GroupCommit::<String>::new());
        let log = Arc::new(Mutex::new(Vec::new()));
        let (gc1, log1) = (gc.clone(), log.clone());
        let first = std::thread::spawn(move || {
            gc1.commit(|| {
                log1.lock().unwrap().push("commit 1 start");
                std::thread::sleep(Duration::from_millis(100));
                log1.lock().unwrap().push("commit 1 end");
                Ok::<(), String>(())
            })
        });
        std::thread::sleep(Duration::from_millis(30));
        log.lock().unwrap().push("second change");
        let log2 = log.clone();
        gc.commit(|| {
            log2.lock().unwrap().push("commit 2");
            Ok::<(), String>(())
        })
        .unwrap();
        first.join().unwrap().unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            [
                "commit 1 start",
                "second change",
                "commit 1 end",
                "commit 2"
            ]
        );
    }

    #[test]
    fn a_failed_commit_fails_its_waiters_and_later_commits_recover() {
        let gc = GroupCommit::<String>::new();
        assert_eq!(
            gc.commit(|| Err("disk gone".into())),
            Err("disk gone".into())
        );
        assert_eq!(gc.commit(|| Ok(())), Ok(()));
    }
}
