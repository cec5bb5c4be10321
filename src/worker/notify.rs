//! A wake-up for one task on the same thread: cheap enough to call for every batch of
//! requests, since it touches no atomics.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
/// Wakes one task on the same thread.
pub struct LocalNotify {
    notified: Cell<bool>,
    waiter: Cell<Option<Waker>>,
}

impl LocalNotify {
    /// Wakes the waiting task, or the next one to wait.
    pub fn notify(&self) {
        if !self.notified.replace(true)
            && let Some(waker) = self.waiter.take()
        {
            waker.wake();
        }
    }

    /// Completes once `notify` has been called since the last completion.
    pub fn notified(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.notified.replace(false) {
                Poll::Ready(())
            } else {
                self.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
    }
}

/// Wakes every task of the same thread waiting for it.
#[derive(Default)]
pub struct LocalBroadcast {
    waiters: RefCell<Vec<Waker>>,
}

impl LocalBroadcast {
    /// Wakes every waiting task.
    pub fn notify_all(&self) {
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Completes once `ready` returns `Some`, checked now and after each `notify_all`.
    pub async fn wait_for<T>(&self, mut ready: impl FnMut() -> Option<T>) -> T {
        std::future::poll_fn(|cx| {
            if let Some(value) = ready() {
                return Poll::Ready(value);
            }
            self.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// Lets every other ready task of this thread run before continuing.
pub async fn yield_now() {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    YieldNow(false).await;
}
