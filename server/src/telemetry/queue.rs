//! The log writer: a bounded queue of bytes that one thread writes out in
//! batches, so a call that logs never waits for stderr and never wakes a
//! thread per line.
//!
//! `tracing-appender`'s non-blocking writer, used before, sends each line
//! through a channel and wakes its writer thread for it, which then makes
//! one `write(2)` per line: under load that was a futex wake, a context
//! switch and a syscall per audit line, about a fifth of the server's CPU
//! per call. Here a line is appended to a buffer under a mutex; the writer
//! thread is woken only when it sleeps on an empty buffer, lets lines gather
//! for [`LINGER`], and writes them with one call.

use std::{
    io::Write,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// How long the writer lets lines gather after the first one wakes it: the
/// most a line waits before its write starts. Under load the writer wakes
/// once per linger; at 2 ms its wake-ups (500 a second, each preempting a
/// busy worker) doubled the server's context switches and cost about 0.03
/// of GetNote throughput in `notes-bench` (median of six alternating runs).
pub const LINGER: Duration = Duration::from_millis(20);

/// A batch this large is written at once, without lingering.
const EAGER_BYTES: usize = 256 * 1024;

/// How long dropping the [`QueueGuard`] waits for the last lines to be
/// written (a hung stderr must not keep the process from exiting).
const FLUSH_ON_EXIT: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    writer_waiting: bool,
    closed: bool,
    finished: bool,
}

/// Lines waiting for the writer thread, at most `limit` bytes of them.
pub struct LogQueue {
    pending: Mutex<Pending>,
    /// Wakes the writer (a line arrived, or the queue closed).
    arrived: Condvar,
    /// Wakes the closing thread (the writer wrote everything and stopped).
    finished: Condvar,
    limit: usize,
    dropped: AtomicU64,
}

impl LogQueue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one line (the formatter writes a whole line at once), or drops
    /// and counts it when the queue holds `limit` bytes or has closed.
    fn push(&self, line: &[u8]) {
        let mut pending = self.lock();
        if pending.closed || pending.bytes.len() + line.len() > self.limit {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.bytes.extend_from_slice(line);
        if pending.writer_waiting {
            pending.writer_waiting = false;
            drop(pending);
            self.arrived.notify_one();
        }
    }

    /// Lines dropped so far because the queue was full (or closed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The writer thread: waits for lines, lets them gather, writes them.
    fn write_out(&self, mut out: impl Write) {
        let mut batch = Vec::new();
        loop {
            {
                let mut pending = self.lock();
                while pending.bytes.is_empty() && !pending.closed {
                    pending.writer_waiting = true;
                    pending = self
                        .arrived
                        .wait(pending)
                        .unwrap_or_else(|e| e.into_inner());
                }
                if pending.bytes.is_empty() {
                    pending.finished = true;
                    drop(pending);
                    self.finished.notify_all();
                    return;
                }
                if !pending.closed && pending.bytes.len() < EAGER_BYTES {
                    drop(pending);
                    std::thread::sleep(LINGER);
                    pending = self.lock();
                }
                std::mem::swap(&mut pending.bytes, &mut batch);
            }
            if out.write_all(&batch).and_then(|()| out.flush()).is_err() {
                let lines = batch.iter().filter(|b| **b == b'\n').count();
                self.dropped
                    .fetch_add(lines.max(1) as u64, Ordering::Relaxed);
            }
            batch.clear();
            // A burst's buffer is not kept for good.
            batch.shrink_to(EAGER_BYTES);
        }
    }

    /// Closes the queue and waits, at most [`FLUSH_ON_EXIT`], for the
    /// writer to write what it holds.
    fn close(&self) {
        let mut pending = self.lock();
        pending.closed = true;
        self.arrived.notify_one();
        let _ = self
            .finished
            .wait_timeout_while(pending, FLUSH_ON_EXIT, |p| !p.finished);
    }
}

/// Starts the writer thread (`notes-log-writer`) writing to `out`; lines
/// beyond `limit` queued bytes are dropped and counted.
pub fn spawn(out: impl Write + Send + 'static, limit: usize) -> (QueueWriter, QueueGuard) {
    let queue = Arc::new(LogQueue {
        pending: Mutex::default(),
        arrived: Condvar::new(),
        finished: Condvar::new(),
        limit,
        dropped: AtomicU64::new(0),
    });
    let writer = queue.clone();
    let spawned = std::thread::Builder::new()
        .name("notes-log-writer".into())
        .spawn(move || writer.write_out(out));
    if spawned.is_err() {
        // No writer thread: every line is dropped and counted, none blocks.
        queue.lock().closed = true;
    }
    (QueueWriter(queue.clone()), QueueGuard(queue))
}

/// Where log lines go: the queue (a `MakeWriter` for the fmt layer).
#[derive(Clone)]
pub struct QueueWriter(Arc<LogQueue>);

impl QueueWriter {
    /// The queue behind this writer.
    pub fn queue(&self) -> &Arc<LogQueue> {
        &self.0
    }
}

impl Write for &QueueWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.0.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for QueueWriter {
    type Writer = &'a QueueWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Dropped, closes the queue and lets the writer finish (at most a second).
pub struct QueueGuard(Arc<LogQueue>);

impl Drop for QueueGuard {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination the test can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_in_order_and_all_of_them_by_the_time_the_guard_drops() {
        let out = Shared::default();
        let (writer, guard) = spawn(out.clone(), 1 << 20);
        for i in 0..1000 {
            (&writer)
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, expected);
        assert_eq!(writer.queue().dropped(), 0);
        // Closed: a late line is dropped and counted, never blocks.
        (&writer).write_all(b"late\n").unwrap();
        assert_eq!(writer.queue().dropped(), 1);
    }

    #[test]
    fn a_full_queue_drops_whole_lines_and_counts_them() {
        /// Never accepts a byte, like a full pipe.
        struct Stuck;
        impl Write for Stuck {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_secs(3600));
                Ok(0)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (writer, guard) = spawn(Stuck, 100);
        // The stuck writer holds one batch (at most 100 bytes) and the queue
        // at most 100 more: whole 10-byte lines, so at most 20 are kept.
        for _ in 0..50 {
            (&writer).write_all(b"123456789\n").unwrap();
        }
        let dropped = writer.queue().dropped();
        assert!((30..=40).contains(&dropped), "{dropped}");
        std::mem::forget(guard);
    }

    #[test]
    fn a_failed_write_counts_its_lines_as_dropped() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (writer, guard) = spawn(Broken, 1 << 20);
        (&writer).write_all(b"a\nb\n").unwrap();
        drop(guard);
        assert_eq!(writer.queue().dropped(), 2);
    }
}
