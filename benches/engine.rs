//! The engine alone, on the shared fixtures, with the shipped policies and the fixture cluster:
//! parse, evaluate (per policy and all together), patch, serialise, and the whole review.
//!
//! ```sh
//! cargo bench --bench engine
//! ```

use confgate::admission::{Review, encode_response, parse_review};
use confgate::cluster::static_state::StaticState;
use confgate::engine::{Engine, diff};
use confgate::policy::{Phase, PolicySet, Registry, load_dir};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

/// The allocator of the confgate binary, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FIXTURES: [&str; 4] = [
    "create-deployment-web",
    "create-pod-limits-only",
    "update-deployment-web",
    "create-configmap-big-config",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn setup() -> (Engine, PolicySet) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("tests/fixtures/cluster-state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let engine = Engine::new(Arc::new(StaticState::load(&files).unwrap()));
    let set = load_dir(&root().join("policies"), &Registry::builtin()).unwrap();
    (engine, set)
}

fn body(name: &str) -> Vec<u8> {
    std::fs::read(root().join(format!("tests/fixtures/admission-reviews/{name}.json"))).unwrap()
}

/// Parse, evaluate, encode: what the server does per request, without HTTP.
fn review(engine: &Engine, set: &PolicySet, bytes: &[u8], endpoint: Phase) -> Vec<u8> {
    let review = parse_review(bytes).unwrap();
    let decision = engine.evaluate(set, &review, endpoint, None).unwrap();
    let response = decision.to_response(&review.request);
    encode_response(
        review.api_version(),
        &response,
        (!decision.patch.0.is_empty()).then_some(&decision.patch),
    )
    .unwrap()
}

fn stages(c: &mut Criterion) {
    let (engine, set) = setup();
    for name in FIXTURES {
        let bytes = body(name);
        let parsed: Review = parse_review(&bytes).unwrap();
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        if name.contains("big") {
            group.sample_size(20);
        }
        group.bench_function("parse", |b| {
            b.iter(|| parse_review(black_box(&bytes)).unwrap())
        });
        for endpoint in [Phase::Mutate, Phase::Validate] {
            group.bench_function(format!("evaluate/{}/all", endpoint.as_str()), |b| {
                b.iter(|| {
                    engine
                        .evaluate(&set, black_box(&parsed), endpoint, None)
                        .unwrap()
                })
            });
            for policy in set
                .policies
                .iter()
                .filter(|p| p.policy.capabilities().serves(endpoint))
            {
                group.bench_function(
                    format!("evaluate/{}/{}", endpoint.as_str(), policy.name),
                    |b| {
                        b.iter(|| {
                            engine
                                .evaluate(&set, black_box(&parsed), endpoint, Some(&policy.name))
                                .unwrap()
                        })
                    },
                );
            }
        }
        let decision = engine.evaluate(&set, &parsed, Phase::Mutate, None).unwrap();
        if let Some(object) = &parsed.object {
            let mut mutated = object.clone();
            json_patch::patch(&mut mutated, &decision.patch).unwrap();
            let mutated = diff::working_copy(&mutated);
            group.bench_function("working copy", |b| {
                b.iter(|| diff::working_copy(black_box(object)))
            });
            let unchanged = diff::working_copy(object);
            group.bench_function("patch (diff, nothing changed)", |b| {
                b.iter(|| diff::patch(black_box(object), black_box(&unchanged)))
            });
            group.bench_function("patch (diff)", |b| {
                b.iter(|| diff::patch(black_box(object), black_box(&mutated)))
            });
        }
        group.bench_function("serialise", |b| {
            b.iter(|| {
                let response = decision.to_response(&parsed.request);
                encode_response(parsed.api_version(), &response, Some(&decision.patch)).unwrap()
            })
        });
        for endpoint in [Phase::Mutate, Phase::Validate] {
            group.bench_function(format!("review/{}", endpoint.as_str()), |b| {
                b.iter(|| review(&engine, &set, black_box(&bytes), endpoint))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, stages);
criterion_main!(benches);
