//! The transcript library at scale: 10,000 synthetic transcripts (mixed Chinese and English,
//! five segments each), then the times that matter to the window: opening the library, the
//! first history page, full-text searches, and the window itself (egui_kittest, real app, real
//! SQLite) from creation until the History tab shows its rows.
//!
//! ```sh
//! cargo run --release --example library_scale            # 10000 transcripts
//! cargo run --release --example library_scale -- 2000    # another count
//! ```
//! Prints a Markdown table (the one in BENCHMARKS.md).

// A measuring tool: a panic is the right answer to a broken setup.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use gpuscribe::app::{AppDeps, Command, GpuScribeApp, HISTORY_LIMIT, LeftTab, LibraryState};
use gpuscribe::engine::{DecodeSettings, EngineHandle, FileTranscript, Segment};
use gpuscribe::gpu::GpuFeed;
use gpuscribe::library::{LIBRARY_FILE, Library, NewJob};

const WORDS: [&str; 24] = [
    "meeting",
    "budget",
    "review",
    "quarterly",
    "planning",
    "customer",
    "release",
    "schedule",
    "design",
    "hiring",
    "roadmap",
    "launch",
    "report",
    "feedback",
    "deadline",
    "contract",
    "travel",
    "training",
    "security",
    "invoice",
    "support",
    "migration",
    "interview",
    "holiday",
];
const HAN: [&str; 16] = [
    "会议", "预算", "明天", "今天", "客户", "项目", "计划", "报告", "时间", "问题", "公司", "市场",
    "技术", "产品", "团队", "数据",
];

/// A deterministic pseudo-random stream (xorshift), so every run stores the same texts.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % 1_000_003).unwrap()
    }
}

fn synthetic(rng: &mut Rng, i: usize) -> FileTranscript {
    let path = PathBuf::from(format!("/data/meetings/{i:05}-call.wav"));
    let mut segments = Vec::new();
    for s in 0..5 {
        let mut text = String::new();
        for _ in 0..12 {
            if rng.next().is_multiple_of(2) {
                text.push_str(HAN[rng.next() % HAN.len()]);
            } else {
                text.push(' ');
                text.push_str(WORDS[rng.next() % WORDS.len()]);
                text.push(' ');
            }
        }
        segments.push(Segment {
            start_s: f64::from(s) * 30.0,
            end_s: f64::from(s + 1) * 30.0,
            text: text.trim().to_owned(),
            language: "zh".into(),
            emotion: "NEUTRAL".into(),
            event: "Speech".into(),
        });
    }
    // A word only one transcript in a thousand has.
    if i % 1000 == 7 {
        segments[2].text.push_str(" zeppelin");
    }
    let text = segments
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    FileTranscript {
        path,
        duration_s: 150.0,
        language: "zh".into(),
        emotion: "NEUTRAL".into(),
        event: "Speech".into(),
        raw_text: text.clone(),
        text,
        segments,
        tokens: Vec::new(),
        words: Vec::new(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .map_or(10_000, |n| n.parse().expect("a count"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LIBRARY_FILE);
    let started = Instant::now();
    {
        let (mut lib, _) = Library::open(&path).unwrap();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for i in 0..count {
            let t = synthetic(&mut rng, i);
            let id = lib
                .add_job(&NewJob {
                    path: t.path.clone(),
                    settings: DecodeSettings::default(),
                    device_request: "auto".into(),
                    model: "FunAudioLLM/SenseVoiceSmall".into(),
                    model_revision: None,
                    recording: None,
                    parts: Vec::new(),
                })
                .unwrap();
            lib.job_done(id, &t, 1000.0).unwrap();
        }
    }
    let fill = started.elapsed();
    let size = std::fs::metadata(&path).unwrap().len();

    let started = Instant::now();
    let (lib, _) = Library::open(&path).unwrap();
    let open = started.elapsed();
    let started = Instant::now();
    let page = lib.list(None, HISTORY_LIMIT).unwrap();
    let first_page = started.elapsed();
    assert_eq!(page.len(), HISTORY_LIMIT.min(count));

    println!(
        "{count} transcripts, {:.1} MB library, filled in {:.1} s (one transaction per job and per result)\n",
        size as f64 / 1e6,
        fill.as_secs_f64()
    );
    println!("| what | matches | median | slowest of 20 |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| open the library (migrate check, quick_check, recovery) | | {} | |",
        ms(open)
    );
    println!(
        "| first history page ({HISTORY_LIMIT} newest) | {} | {} | |",
        page.len(),
        ms(first_page)
    );
    for query in [
        "meeting",
        "会议",
        "预算 review",
        "zeppelin",
        "plan",
        "会议 budget 明天",
    ] {
        let mut times = Vec::new();
        let mut matches = 0;
        for _ in 0..20 {
            let started = Instant::now();
            matches = lib.list(Some(query), HISTORY_LIMIT).unwrap().len();
            times.push(started.elapsed());
        }
        times.sort();
        println!(
            "| search `{query}` (newest {HISTORY_LIMIT}) | {matches} | {} | {} |",
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1])
        );
    }
    drop(lib);

    // The window: the real app on this library, from creation until the History tab shows rows.
    let mut windows = Vec::new();
    for _ in 0..5 {
        let (_gpu_tx, gpu_rx) = crossbeam_channel::bounded(4);
        let (request_tx, _requests) = crossbeam_channel::bounded(64);
        let (_events_tx, event_rx) = crossbeam_channel::bounded(64);
        let mut deps = AppDeps::new(
            GpuFeed::from_receiver(gpu_rx),
            Box::new(move |_| {
                Ok(EngineHandle::from_channels(
                    request_tx.clone(),
                    event_rx.clone(),
                ))
            }),
        );
        deps.library_path = Some(path.clone());
        let started = Instant::now();
        let mut harness = Harness::builder()
            .with_size([1400.0, 900.0])
            .build_eframe(move |cc| GpuScribeApp::new(cc, deps));
        harness.state_mut().apply(Command::SetTab(LeftTab::History));
        let mut frames = 0;
        loop {
            harness.step();
            frames += 1;
            let history = harness.state().history();
            if history.state == LibraryState::Open && history.entries.len() == page.len() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the window never showed rows"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        windows.push((started.elapsed(), frames));
    }
    windows.sort();
    let (median, frames) = windows[windows.len() / 2];
    println!(
        "| window created → History shows {} rows (egui_kittest, median of 5; {frames} frames) | | {} | {} |",
        page.len(),
        ms(median),
        ms(windows[windows.len() - 1].0)
    );
}
