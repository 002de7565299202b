//! Log floods: a step that prints hundreds of megabytes — in one endless line, in long lines,
//! in very many short ones — finishes, and its stored log stays under the run's cap plus a
//! small overhead, ends with a line that says it was truncated, moves the executor's counter,
//! and is listed in pages bounded in bytes.

use opsconductor_api::jobs::v1::*;
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{JobsExt, Sandbox, StorageBackend};

use crate::jobs::{job, shell, LIMIT};
use crate::support::peak_rss_kib;

/// The executor's default cap (EXECUTOR_LOG_MAX_BYTES).
const CAP: u64 = 4 * 1024 * 1024;
/// System lines may go past the cap (64 KiB) and the stored encoding differs a little from
/// the executor's count.
const OVERHEAD: u64 = 256 * 1024;
/// ListRunLogs' page bound (proto comment on ListRunLogsRequest.page_size).
const PAGE_BYTES: usize = 1024 * 1024;

/// What the jobs service stores for `run_id`, in bytes.
async fn stored_bytes(s: &Sandbox, run_id: &str) -> u64 {
    let (bytes,): (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(LENGTH(body)), 0) AS BIGINT) FROM run_log_chunks WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_one(s.db(ServiceKind::Jobs).pool())
    .await
    .unwrap();
    bytes as u64
}

/// Every page of the run's log, checking each is under the byte bound; and how many pages.
async fn pages(s: &Sandbox, run_id: &str) -> (Vec<LogLine>, usize) {
    let mut lines = Vec::new();
    let mut count = 0;
    let mut token = String::new();
    loop {
        let page = s
            .jobs()
            .list_run_logs(ListRunLogsRequest {
                run_id: run_id.into(),
                page_size: 5000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let bytes: usize = page
            .lines
            .iter()
            .map(|l| l.text.len() + l.step_name.len() + l.target_id.len() + 32)
            .sum();
        assert!(bytes <= PAGE_BYTES, "a page of {bytes} bytes");
        count += 1;
        let empty = page.lines.is_empty();
        lines.extend(page.lines);
        if page.next_page_token.is_empty() || empty {
            return (lines, count);
        }
        token = page.next_page_token;
    }
}

fn truncated_runs(text: &str) -> f64 {
    crate::metrics::sample(text, "opsconductor_executor_runs_log_truncated_total", &[])
        .unwrap_or(0.0)
}

/// `whole_run`: the run's log reaches its cap (else one line is cut at the line cap).
async fn flood(s: &Sandbox, name: &str, command: &str, printed: u64, whole_run: bool) {
    let metrics = s.metrics_url(ServiceKind::Executor);
    let before = truncated_runs(&crate::metrics::http("GET", &metrics).await.1);
    let j = s
        .jobs()
        .create(job(
            name,
            vec![shell("flood", command), shell("after", "echo still-here")],
        ))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let run = s.jobs().start(&j.id, &[]).await.unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT * 3).await.unwrap();
    assert_eq!(
        RunState::try_from(run.state),
        Ok(RunState::Succeeded),
        "{name}: {run:?}"
    );
    let stored = stored_bytes(s, &run.id).await;
    assert!(
        stored <= CAP + OVERHEAD,
        "{name}: {stored} bytes stored for {printed} printed"
    );
    let (lines, count) = pages(s, &run.id).await;
    let listed: u64 = lines.iter().map(|l| l.text.len() as u64).sum();
    assert!(listed <= CAP + OVERHEAD, "{name}: {listed} bytes listed");
    assert!(lines.iter().all(|l| l.text.len() <= 16 * 1024));
    let last = &lines.last().unwrap().text;
    if whole_run {
        assert!(
            last.starts_with("log truncated:") && last.contains("were not kept"),
            "{name}: the last line is {last:?}"
        );
    } else {
        // One line, cut: a few lines of the log, the cut one saying so.
        assert!(stored < 64 * 1024, "{name}: {stored}");
        let cut: Vec<&LogLine> = lines
            .iter()
            .filter(|l| l.text.ends_with(" …[line truncated]"))
            .collect();
        assert_eq!(cut.len(), 1, "{name}");
        assert!(cut[0].text.len() <= 16 * 1024);
    }
    // The step after the flood ran (its output is in the log only when the cap was not hit).
    assert!(run
        .steps
        .iter()
        .any(|st| st.step_name == "after" && st.state == StepState::Succeeded as i32));
    assert_eq!(
        lines.iter().any(|l| l.text == "still-here"),
        !whole_run,
        "{name}"
    );
    // Seqs continue without gaps: nothing was lost between executor and jobs service.
    for pair in lines.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1);
    }
    // Wide lines fill pages by bytes long before 5000 lines.
    if name == "wide-lines" {
        assert!(count >= 4, "{count} pages");
    }
    let after = truncated_runs(&crate::metrics::http("GET", &metrics).await.1);
    let moved = if whole_run { 1.0 } else { 0.0 };
    assert_eq!(after, before + moved, "{name}: the counter");
    eprintln!(
        "{name}: {printed} bytes printed, {stored} bytes stored, {} lines in {count} pages, \
         in {:?}; peak RSS of the process {} MiB",
        lines.len(),
        started.elapsed(),
        peak_rss_kib() / 1024
    );
}

/// 300 MB in one line, in 100-byte lines and in 20 kB lines; 10 million short lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_step_finishes_with_its_log_under_the_cap() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    eprintln!("peak RSS before the floods {} MiB", peak_rss_kib() / 1024);
    flood(
        &s,
        "one-endless-line",
        "head -c 300000000 /dev/zero | tr '\\0' x",
        300_000_000,
        false,
    )
    .await;
    flood(
        &s,
        "long-lines",
        "yes xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx \
         | head -c 300000000",
        300_000_000,
        true,
    )
    .await;
    flood(
        &s,
        "wide-lines",
        "yes \"$(head -c 20000 /dev/zero | tr '\\0' w)\" | head -c 300000000",
        300_000_000,
        true,
    )
    .await;
    flood(&s, "short-lines", "seq 1 10000000", 78_888_897, true).await;
    s.stop().await;
}

/// An ssh target (which needs no account on the platform) floods its step's channel: the
/// executor stops reading while its log is sent, and the log stays under the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_ssh_target_is_capped_too() {
    use crate::jobs::ssh::{ssh_job, sshd_target};

    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let (_sshd, _) = sshd_target(&s, "flooder").await;
    let j = s
        .jobs()
        .create(ssh_job(
            "ssh-flood",
            "yes xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx | head -c 100000000",
            &["flooder"],
        ))
        .await
        .unwrap();
    let run = s.jobs().start(&j.id, &[]).await.unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT * 3).await.unwrap();
    assert_eq!(
        RunState::try_from(run.state),
        Ok(RunState::Succeeded),
        "{run:?}"
    );
    let stored = stored_bytes(&s, &run.id).await;
    assert!(stored <= CAP + OVERHEAD, "{stored}");
    let (lines, _) = pages(&s, &run.id).await;
    let last = &lines.last().unwrap().text;
    assert!(last.starts_with("log truncated:"), "{last}");
    eprintln!("ssh flood: 100000000 bytes printed, {stored} bytes stored");
    s.stop().await;
}

/// The caps are the executor's settings; a line over the line cap is cut with a marker and
/// shows nothing of what followed the cut (PostgreSQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caps_are_settings_and_long_lines_say_they_were_cut() {
    let s = Sandbox::start_with(
        StorageBackend::Postgres,
        &[
            ("EXECUTOR_LOG_MAX_BYTES", "2097152"),
            ("EXECUTOR_LOG_LINE_BYTES", "1024"),
        ],
    )
    .await;
    let j = s
        .jobs()
        .create(job(
            "wide",
            vec![shell(
                "wide",
                "for i in $(seq 1 100); do head -c 5000 /dev/zero | tr '\\0' y; echo \" end-$i\"; done; \
                 echo short",
            )],
        ))
        .await
        .unwrap();
    let run = s.jobs().start(&j.id, &[]).await.unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(RunState::try_from(run.state), Ok(RunState::Succeeded));
    let (lines, _) = pages(&s, &run.id).await;
    let wide: Vec<&LogLine> = lines.iter().filter(|l| l.text.starts_with('y')).collect();
    assert_eq!(wide.len(), 100);
    for line in &wide {
        assert!(line.text.len() <= 1024, "{}", line.text.len());
        assert!(line.text.ends_with(" …[line truncated]"), "{}", line.text);
        assert!(!line.text.contains("end-"));
    }
    assert!(lines.iter().any(|l| l.text == "short"));
    assert!(!lines.iter().any(|l| l.text.starts_with("log truncated:")));

    s.stop().await;
}
