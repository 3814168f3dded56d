//! The start and stop of a service binary, so that every `main.rs` reports them the same way:
//! one line on stderr (or one `tracing` error) and an exit code, never a panic; and the runtime
//! its tasks run on.

use std::future::Future;
use std::process::ExitCode;

use crate::telemetry::{self, Telemetry, TelemetryConfig};

/// [`telemetry::init`] for `main`: a bad configuration is printed as `<name>: <causes>` and becomes
/// the exit code. Hold the guard for the whole of `main`, declared first, so it is dropped last.
pub fn telemetry(name: &str, config: &TelemetryConfig) -> Result<Telemetry, ExitCode> {
    telemetry::init(name, config).map_err(|err| {
        eprintln!("{name}: {err:#}");
        ExitCode::FAILURE
    })
}

/// Builds the app, tells `started` about it, then runs it (until its shutdown signal) and logs how
/// it ended: `cannot start` or `stopped with an error`, with the causes on one line.
pub async fn run<A, R>(
    build: impl Future<Output = anyhow::Result<A>>,
    started: impl FnOnce(&A),
    run: impl FnOnce(A) -> R,
) -> ExitCode
where
    R: Future<Output = anyhow::Result<()>>,
{
    let app = match build.await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!("cannot start: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    started(&app);
    match run(app).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("stopped with an error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The threads that run a service's tasks.
///
/// One by default: a tokio runtime on the main thread alone. On this project's two-core machine a
/// service spends most of its CPU at moderate rates being woken, and with several threads each
/// message woke two or three of them (the one that reads the socket, the one the task runs on, the
/// main thread that `#[tokio::main]` polls its future on); one thread is woken once. Measured in
/// BENCHMARKS.md ("one thread per service"). More threads let one instance use more cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct RuntimeArgs {
    /// Threads that run this service's tasks (`SERVICE_THREADS`, default 1: everything on the
    /// main thread); more let one busy instance use more cores, at the cost of the threads waking
    /// each other.
    #[arg(
        long = "service-threads",
        env = "SERVICE_THREADS",
        value_name = "SERVICE_THREADS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=1024),
        global = true
    )]
    pub threads: u16,
}

impl RuntimeArgs {
    /// The runtime: the current thread alone for one thread (threads that `spawn_blocking`
    /// starts are named `tokio-blocking`), else a multi-threaded one with this many workers
    /// (`tokio-rt-worker`). I/O and timers are enabled either way.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = if self.threads <= 1 {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            // Only `spawn_blocking` starts threads here; named so, none passes for a worker.
            builder.thread_name("tokio-blocking");
            builder
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(self.threads));
            builder
        };
        builder.enable_all().build()
    }
}

/// `main` of a service: runs `main` to its end on the runtime `args` ask for. A runtime that
/// cannot be made is printed as `<name>: <cause>` and exits with a failure.
pub fn block_on(name: &str, args: RuntimeArgs, main: impl Future<Output = ExitCode>) -> ExitCode {
    match args.runtime() {
        Ok(runtime) => runtime.block_on(main),
        Err(err) => {
            eprintln!("{name}: cannot start the async runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use tokio::runtime::RuntimeFlavor;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Service {
        #[command(flatten)]
        runtime: RuntimeArgs,
    }

    fn flavor(args: &[&str]) -> RuntimeFlavor {
        let service = Service::try_parse_from(args).expect("parses");
        let runtime = service.runtime.runtime().expect("a runtime");
        runtime.handle().runtime_flavor()
    }

    #[test]
    fn a_service_runs_on_its_main_thread_alone_by_default() {
        assert_eq!(flavor(&["svc"]), RuntimeFlavor::CurrentThread);
        assert_eq!(
            flavor(&["svc", "--service-threads", "1"]),
            RuntimeFlavor::CurrentThread
        );
    }

    #[test]
    fn more_threads_make_a_multi_threaded_runtime_of_that_many_workers() {
        let service = Service::try_parse_from(["svc", "--service-threads", "3"]).expect("parses");
        let runtime = service.runtime.runtime().expect("a runtime");
        assert_eq!(
            runtime.handle().runtime_flavor(),
            RuntimeFlavor::MultiThread
        );
        assert_eq!(runtime.metrics().num_workers(), 3);
        // The name the stack's test looks for in a service's threads.
        let worker = runtime.spawn(async { std::thread::current().name().map(str::to_owned) });
        let worker = runtime.block_on(worker).expect("the task ran");
        assert_eq!(worker.as_deref(), Some("tokio-rt-worker"));
    }

    #[test]
    fn on_one_thread_only_blocking_work_starts_threads_and_they_say_so() {
        let runtime = RuntimeArgs { threads: 1 }.runtime().expect("a runtime");
        let (main, blocking) = runtime.block_on(async {
            let main = tokio::spawn(async { std::thread::current().id() })
                .await
                .expect("the task ran");
            let blocking =
                tokio::task::spawn_blocking(|| std::thread::current().name().map(str::to_owned))
                    .await
                    .expect("the blocking task ran");
            (main, blocking)
        });
        assert_eq!(
            main,
            std::thread::current().id(),
            "tasks run on the main thread"
        );
        assert_eq!(blocking.as_deref(), Some("tokio-blocking"));
    }

    #[test]
    fn zero_threads_are_refused() {
        let error = Service::try_parse_from(["svc", "--service-threads", "0"])
            .expect_err("zero is refused");
        assert!(error.to_string().contains("--service-threads"), "{error}");
    }

    #[test]
    fn block_on_runs_the_main_future_to_its_exit_code() {
        let args = RuntimeArgs { threads: 1 };
        let code = block_on("svc", args, async {
            tokio::task::yield_now().await;
            ExitCode::from(3)
        });
        assert_eq!(code, ExitCode::from(3));
    }
}
