//! End-to-end tests on a real control plane: etcd, kube-apiserver and kube-controller-manager
//! from `ETCD`, `KUBE_APISERVER` and `KUBE_CONTROLLER_MANAGER` (`scripts/e2e-env.sh` unpacks the
//! ones in `../shared/kube/`), confgate run as its own binary and registered by URL.
//!
//! `cargo test --test e2e` runs them (names start with `e2e_`). Without the binaries every test
//! is reported as ignored, with a banner that says why; none is ever reported as passed.
//! One control plane serves the whole run (each test has its own namespace) and is stopped by
//! PID at the end, whatever the tests did.

mod cases;
mod harness;
#[path = "../support/otlp.rs"]
mod otlp;

use harness::Cx;
use harness::control_plane::{Binaries, ControlPlane};
use libtest_mimic::{Arguments, Trial};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::OnceLock;

/// An e2e test: an async function of the test context.
pub type Case = fn(Cx) -> Pin<Box<dyn Future<Output = ()> + Send>>;

static PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// The suite's control plane, started by the first test that needs it.
fn plane(binaries: &Binaries) -> Result<&'static ControlPlane, String> {
    PLANE
        .get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e");
            let started = std::time::Instant::now();
            let plane = ControlPlane::start(binaries, &root)?;
            eprintln!(
                "e2e: control plane {} up in {:.1} s ({})",
                plane.version,
                started.elapsed().as_secs_f64(),
                plane.dir.display()
            );
            Ok(plane)
        })
        .as_ref()
        .map_err(|e| format!("the control plane did not start: {e}"))
}

fn run_case(binaries: &Binaries, case: Case) -> Result<(), libtest_mimic::Failed> {
    let plane = plane(binaries)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let cx = Cx::new(plane).await;
        case(cx).await;
    });
    Ok(())
}

fn main() -> std::process::ExitCode {
    let mut args = Arguments::from_args();
    // The tests mostly wait on the control plane; a few at a time keep two cores busy.
    args.test_threads.get_or_insert(4);
    let binaries = Binaries::from_env();
    let benches = cases::benches().into_iter().map(|(n, c)| (n, c, true));
    let trials: Vec<Trial> = cases::all()
        .into_iter()
        .map(|(n, c)| (n, c, false))
        .chain(benches)
        .map(|(name, case, bench)| match &binaries {
            // Benchmarks run only with --ignored.
            Ok(binaries) => {
                let binaries = binaries.clone();
                Trial::test(name, move || run_case(&binaries, case)).with_ignored_flag(bench)
            }
            Err(_) => Trial::test(name, || {
                Err("no control plane binaries: see the banner above".into())
            })
            .with_ignored_flag(true),
        })
        .collect();
    if let Err(why) = &binaries {
        eprintln!(
            "\n==== e2e: ALL {} END-TO-END TESTS SKIPPED (reported as ignored, not passed) ====\n\
             why: {why}\n\
             run them with: eval \"$(scripts/e2e-env.sh)\" && cargo test --locked --test e2e\n\
             (or set ETCD, KUBE_APISERVER and KUBE_CONTROLLER_MANAGER to any binaries)\n\
             skipped: {}\n",
            trials.len(),
            trials
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(Ok(plane)) = PLANE.get() {
        plane.stop();
    }
    conclusion.exit_code()
}
