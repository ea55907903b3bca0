//! A policy decision (`check_host`) with 10 and 10,000 rules.
//! Target: under 1 µs per decision at 10,000 rules.

use std::hint::black_box;

use agent_sandbox::policy::{Host, Policy};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn policy_with(n: usize) -> Policy {
    let mut b = Policy::builder();
    for i in 0..n {
        b = match i % 3 {
            0 => b.allow(format!("host{i}.example.test")),
            1 => b.allow(format!("*.wild{i}.example.test")),
            _ => b.allow(format!(".dot{i}.example.test:*")),
        };
    }
    b.deny("blocked.example.test").build().expect("valid rules")
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy_decision");
    for n in [10usize, 10_000] {
        let policy = policy_with(n);
        let last = n - 1 - (n - 1) % 3;
        let hit = Host::parse(&format!("host{last}.example.test")).unwrap();
        let wild = Host::parse("a.b.wild1.example.test").unwrap();
        let miss = Host::parse("nothing.here.test").unwrap();
        group.bench_with_input(BenchmarkId::new("exact_hit", n), &hit, |b, h| {
            b.iter(|| black_box(policy.check_host(black_box(h), 443).is_ok()))
        });
        group.bench_with_input(BenchmarkId::new("wildcard_hit", n), &wild, |b, h| {
            b.iter(|| black_box(policy.check_host(black_box(h), 443).is_ok()))
        });
        group.bench_with_input(BenchmarkId::new("miss", n), &miss, |b, h| {
            b.iter(|| black_box(policy.check_host(black_box(h), 443).is_err()))
        });
    }
    group.bench_function("parse_and_decide_10000", |b| {
        let policy = policy_with(10_000);
        b.iter(|| {
            let h = Host::parse(black_box("Host9999.Example.TEST.")).unwrap();
            black_box(policy.check_host(&h, 443).is_ok())
        })
    });
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
