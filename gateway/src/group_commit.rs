//! Group commit: requests that need their changes durable share commits.
//!
//! A caller has already applied its change; it needs a commit that *starts* after that
//! moment. If no commit is running it starts one; if one is running (it may have begun
//! before the caller's change), the caller waits for it to end and then for the next one,
//! which the first waiter starts on behalf of everyone who queued meanwhile. N concurrent
//! durable requests thus cost about two commits instead of N.

use std::sync::{Condvar, Mutex};

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
}

impl<E> Default for State<E> {
    fn default() -> Self {
        Self {
            running: false,
            started: 0,
            done: 0,
            failed: Default::default(),
        }
    }
}

/// Shares commits between concurrent callers; `E` is the commit's error.
#[derive(Debug)]
pub struct GroupCommit<E> {
    state: Mutex<State<E>>,
    finished: Condvar,
}

impl<E: Clone> Default for GroupCommit<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: Clone> GroupCommit<E> {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            finished: Condvar::new(),
        }
    }

    /// Make durable every change applied before this call, running `commit` or waiting for
    /// a commit another caller runs. A failed commit fails every caller that waited for it.
    pub fn commit(&self, commit: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // The first commit that can hold our change: the next one to start.
        let target = st.started + 1;
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
                st.running = true;
                st.started += 1;
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
