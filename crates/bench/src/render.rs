//! What the render sandbox costs a notification: the same template rendered in-process (the
//! baseline, what the service did before templates moved into child processes) and through
//! `opsconductor render-sandbox` children (a JSON line each way over a pipe), one at a time and
//! two at once; and what a template bomb costs (its child dies at its memory limit and is
//! replaced).

use std::time::{Duration, Instant};

use anyhow::Context;
use opsconductor_api::common::v1::NotificationChannel;
use opsconductor_notify_render::sandbox::{Limits, Sandbox};
use opsconductor_notify_render::Source;

use crate::stats::{ms, percentile};

const SUBJECT: &str = "[{{ run.state }}] {{ job.name }} on {{ run.targets | length }} targets";
const BODY: &str = "Run {{ run.id }} of {{ job.name }} ended {{ run.state }}.\n\
{% for t in run.targets %}- {{ t.name }}: {{ t.state }}\n{% endfor %}\
Started by {{ run.triggered_by }}; {{ run.error | default('no error') }}.";
const BOMB: &str = "{% set a = 'x' * 100000000 %}{% set a = a ~ a ~ a ~ a %}{{ a | length }}";

fn context() -> serde_json::Value {
    let targets: Vec<serde_json::Value> = (0..20)
        .map(|i| serde_json::json!({"name": format!("web-{i:02}"), "state": "SUCCEEDED"}))
        .collect();
    serde_json::json!({
        "run": {"id": "01900000-0000-7000-8000-000000000001", "state": "FAILED",
                "targets": targets, "triggered_by": "alice", "error": "step \"deploy\" failed"},
        "job": {"name": "deploy-web"},
    })
}

fn report(name: &str, mut samples: Vec<Duration>, base: Option<Duration>) -> Duration {
    let p50 = percentile(&mut samples, 0.50);
    let p99 = percentile(&mut samples, 0.99);
    let ratio = base.map_or(String::new(), |b| {
        format!(
            " | p50 {:.1}x in-process",
            p50.as_secs_f64() / b.as_secs_f64()
        )
    });
    println!(
        "{name}: p50 {:.3} ms, p99 {:.3} ms{ratio}",
        ms(p50),
        ms(p99)
    );
    p50
}

pub async fn run(renders: usize) -> anyhow::Result<()> {
    let source = Source {
        subject: SUBJECT,
        body: BODY,
        html_body: "",
    };
    let context = context();
    let channel = NotificationChannel::Email;
    let sandbox = Sandbox::start(
        crate::opsconductor_binary()?,
        vec!["render-sandbox".into()],
        Limits::default(),
    )
    .await
    .context("start the render sandbox")?;
    println!("{renders} renders of a 20-target run-finished email each way");

    let mut inline = Vec::with_capacity(renders);
    for _ in 0..renders {
        let started = Instant::now();
        opsconductor_notify_render::render(channel, &source, &context)?;
        inline.push(started.elapsed());
    }
    let base = report("in-process", inline, None);

    let mut sandboxed = Vec::with_capacity(renders);
    for _ in 0..renders {
        let started = Instant::now();
        sandbox
            .render(channel, &source, &context)
            .await?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        sandboxed.push(started.elapsed());
    }
    report("sandbox, one at a time", sandboxed, Some(base));

    // Two renders in flight: both children busy.
    let started = Instant::now();
    let pairs = renders / 2;
    let mut both = Vec::with_capacity(pairs * 2);
    for _ in 0..pairs {
        let one = Instant::now();
        let (a, b) = tokio::join!(
            sandbox.render(channel, &source, &context),
            sandbox.render(channel, &source, &context)
        );
        a?.map_err(|e| anyhow::anyhow!("{e}"))?;
        b?.map_err(|e| anyhow::anyhow!("{e}"))?;
        let took = one.elapsed();
        both.extend([took, took]);
    }
    let per_second = (pairs * 2) as f64 / started.elapsed().as_secs_f64();
    report("sandbox, two in flight (per pair)", both, Some(base));
    println!("sandbox, two in flight: {per_second:.0} renders/s");

    // A bomb: refused at the child's memory limit, and the next render gets a fresh child.
    let bomb = Source {
        subject: "x",
        body: BOMB,
        html_body: "",
    };
    let mut bombs = Vec::new();
    let mut after = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let refused = sandbox.render(channel, &bomb, &context).await?;
        anyhow::ensure!(refused.is_err(), "the bomb rendered");
        bombs.push(started.elapsed());
        let started = Instant::now();
        sandbox
            .render(channel, &source, &context)
            .await?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        after.push(started.elapsed());
    }
    report("a template bomb, refused", bombs, None);
    report("the render after a bomb", after, Some(base));
    Ok(())
}
