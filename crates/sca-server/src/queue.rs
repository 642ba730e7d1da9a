//! The bounded work queue: at most `capacity` requests are admitted to heavy work (waiting or
//! running); the encoder and the prompt decoder each run at most N jobs at once. A job runs on
//! tokio's blocking pool and holds its permit there, so a client that goes away never frees a
//! slot while its work still runs; cancelled work stops at its next check.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Which pool a job runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    Encoder,
    Predict,
}

struct Inner {
    capacity: usize,
    admitted: AtomicUsize,
    encoder: Arc<Semaphore>,
    encoder_workers: usize,
    predict: Arc<Semaphore>,
    predict_workers: usize,
}

/// See the module docs.
///
/// ```
/// let q = sca_server::queue::WorkQueue::new(1, 1, 1);
/// let t = q.admit().expect("room for one");
/// assert!(q.admit().is_none()); // full: the caller answers 503
/// drop(t);
/// assert_eq!(q.depth(), 0);
/// ```
#[derive(Clone)]
pub struct WorkQueue(Arc<Inner>);

/// A place in the queue; the place is given back when the last clone is dropped.
#[derive(Clone)]
pub struct Ticket(#[allow(dead_code)] Arc<TicketInner>);

struct TicketInner(Arc<Inner>);

impl Drop for TicketInner {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

impl WorkQueue {
    pub fn new(capacity: usize, encoder_workers: usize, predict_workers: usize) -> Self {
        Self(Arc::new(Inner {
            capacity,
            admitted: AtomicUsize::new(0),
            encoder: Arc::new(Semaphore::new(encoder_workers)),
            encoder_workers,
            predict: Arc::new(Semaphore::new(predict_workers)),
            predict_workers,
        }))
    }

    /// A place in the queue, or `None` when it is full.
    pub fn admit(&self) -> Option<Ticket> {
        let inner = &self.0;
        let mut cur = inner.admitted.load(Ordering::Acquire);
        loop {
            if cur >= inner.capacity {
                return None;
            }
            match inner.admitted.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Ticket(Arc::new(TicketInner(self.0.clone())))),
                Err(now) => cur = now,
            }
        }
    }

    /// Requests admitted (waiting or running).
    pub fn depth(&self) -> usize {
        self.0.admitted.load(Ordering::Acquire)
    }

    pub fn capacity(&self) -> usize {
        self.0.capacity
    }

    /// Jobs running in `pool` now.
    pub fn running(&self, pool: Pool) -> usize {
        let (sem, n) = self.pool(pool);
        n - sem.available_permits().min(n)
    }

    fn pool(&self, pool: Pool) -> (&Arc<Semaphore>, usize) {
        match pool {
            Pool::Encoder => (&self.0.encoder, self.0.encoder_workers),
            Pool::Predict => (&self.0.predict, self.0.predict_workers),
        }
    }

    /// Waits for a free worker in `pool`, then runs `job` on the blocking pool. `job` gets the
    /// cancel flag, set when the request is dropped (client gone, timeout): it should check it
    /// between steps. The ticket and the worker are held until `job` returns.
    pub async fn run<T, F>(
        &self,
        pool: Pool,
        ticket: &Ticket,
        cancel: &CancelOnDrop,
        job: F,
    ) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&AtomicBool) -> Result<T, ApiError> + Send + 'static,
    {
        let (sem, _) = self.pool(pool);
        let permit: OwnedSemaphorePermit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("work queue closed"))?;
        let ticket = ticket.clone();
        let flag = cancel.flag();
        let handle = tokio::task::spawn_blocking(move || {
            let _hold = (permit, ticket);
            if flag.load(Ordering::Acquire) {
                return Err(ApiError::new(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    "cancelled",
                    "the request was cancelled",
                ));
            }
            job(&flag)
        });
        match handle.await {
            Ok(r) => r,
            Err(e) => Err(ApiError::internal(format!("worker failed: {e}"))),
        }
    }
}

/// A flag that is set when this guard is dropped before [`CancelOnDrop::disarm`].
pub struct CancelOnDrop {
    flag: Arc<AtomicBool>,
    armed: bool,
}

impl Default for CancelOnDrop {
    fn default() -> Self {
        Self::new()
    }
}

impl CancelOnDrop {
    pub fn new() -> Self {
        Self {
            flag: Arc::new(AtomicBool::new(false)),
            armed: true,
        }
    }

    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    /// The request finished: dropping the guard no longer cancels anything.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.flag.store(true, Ordering::Release);
        }
    }
}
