//! Property tests: hostile or random input never panics or hangs, and the
//! run state machine keeps its invariants under any sequence of inputs.

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use trackside::engine::JobStatus;
use trackside::engine::state::{CancelReason, Effect, Input, Options, Outcome, RunState};
use trackside::pipeline::expr::{self, Context};
use trackside::pipeline::vars::Scope;
use trackside::pipeline::{FailureClass, LoadOptions, Plan, parse_source};

const DEMO: &str = include_str!("../examples/demo.yml");
const GITLAB_DEMO: &str = include_str!("../examples/demo.gitlab-ci.yml");

/// The same for a GitLab CI file.
fn check_gitlab(text: String) {
    let opts = LoadOptions {
        dialect: Some(trackside::pipeline::Dialect::Gitlab),
        ci_vars: vec![
            ("CI_COMMIT_BRANCH".into(), "main".into()),
            ("CI_DEFAULT_BRANCH".into(), "main".into()),
        ],
        ..LoadOptions::default()
    };
    if let Ok((p, _)) = parse_source(Path::new(".gitlab-ci.yml"), text, &opts) {
        Plan::build(&p).expect("valid pipelines plan");
    }
}

fn check(text: String) {
    if let Ok((p, _)) = parse_source(Path::new("fuzz.yml"), text, &LoadOptions::default()) {
        // A pipeline that validates must plan.
        Plan::build(&p).expect("valid pipelines plan");
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, String),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Indent(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..40usize).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), "[-:{}\\[\\]&*!|>'\"#%@`, \n\ta-z0-9$]{1,12}").prop_map(|(a, s)| Mutation::Insert(a, s)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<usize>(), 0..6usize).prop_map(|(a, n)| Mutation::Indent(a, n)),
    ]
}

fn apply(text: &str, muts: &[Mutation]) -> String {
    let mut s: Vec<char> = text.chars().collect();
    for m in muts {
        match m {
            Mutation::Delete(at, n) if !s.is_empty() => {
                let at = at % s.len();
                let end = (at + n).min(s.len());
                s.drain(at..end);
            }
            Mutation::Insert(at, t) => {
                let at = if s.is_empty() { 0 } else { at % s.len() };
                for (i, c) in t.chars().enumerate() {
                    s.insert(at + i, c);
                }
            }
            Mutation::DuplicateLine(i) | Mutation::Indent(i, _) | Mutation::SwapLines(i, _) => {
                let text: String = s.iter().collect();
                let mut lines: Vec<String> = text.lines().map(String::from).collect();
                if lines.is_empty() {
                    continue;
                }
                let a = i % lines.len();
                match m {
                    Mutation::DuplicateLine(_) => {
                        let l = lines[a].clone();
                        lines.insert(a, l);
                    }
                    Mutation::Indent(_, n) => lines[a] = format!("{}{}", " ".repeat(*n), lines[a].trim_start()),
                    Mutation::SwapLines(_, b) => {
                        let b = b % lines.len();
                        lines.swap(a, b);
                    }
                    _ => {}
                }
                s = lines.join("\n").chars().collect();
            }
            _ => {}
        }
    }
    s.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check(String::from_utf8_lossy(&bytes).into_owned());
    }

    #[test]
    fn yaml_shaped_noise_never_panics(text in "[-:{}\\[\\]&*!|>'\"#%@`, \n\ta-z0-9$<]{0,400}") {
        check(text);
    }

    #[test]
    fn mutated_demo_pipelines_never_panic(muts in proptest::collection::vec(mutation(), 1..8)) {
        check(apply(DEMO, &muts));
    }

    #[test]
    fn mutated_gitlab_pipelines_never_panic(muts in proptest::collection::vec(mutation(), 1..8)) {
        check_gitlab(apply(GITLAB_DEMO, &muts));
    }

    #[test]
    fn gitlab_shaped_noise_never_panics(text in "[-:{}\\[\\]&*!|>'\"#%@`, \n\ta-z0-9$<.]{0,400}") {
        check_gitlab(text);
    }

    #[test]
    fn random_rules_expressions_never_panic(src in "[$A-Z_a-z0-9 ()=!~&|/'\"\\\\.*^+?{}\\[\\]-]{0,80}") {
        if let Ok(e) = trackside::pipeline::gitlab::rules::parse(&src) {
            let _ = e.eval(&|name| (name == "A").then(|| "x".to_string()));
        }
    }

    #[test]
    fn random_expressions_never_panic(src in "[a-zA-Z_.()'\\[\\]!=<>&| ,0-9{}-]{0,80}") {
        struct C;
        impl Context for C {
            fn env(&self, _: &str) -> Option<String> { Some("v".into()) }
            fn var(&self, _: &str) -> Option<String> { None }
            fn job_status(&self, _: &str) -> Option<String> { Some("success".into()) }
            fn upstream_succeeded(&self) -> bool { true }
        }
        if let Ok(e) = expr::parse(&src) {
            let _ = expr::eval(&e, &C);
        }
        let _ = expr::interpolate(&format!("x ${{{{ {src} }}}} y"), &C);
    }

    #[test]
    fn random_templates_never_panic(t in "[$a-zA-Z_{}:+/ -]{0,60}", v in "[$a-zA-Z_{}:+/ -]{0,30}") {
        let mut s = Scope::new();
        s.push_layer([("A", v.as_str()), ("B", "$A$A")]);
        let _ = s.expand(&t);
        let _ = s.resolve_all();
    }

    #[test]
    fn replacement_chains_stay_within_the_budget(
        seed in "[ab]{1,40}",
        ops in proptest::collection::vec(("[ab]{1,2}", 0..3usize), 1..6),
    ) {
        // Each variable replaces a pattern of the previous one with a
        // reference to one earlier: growth is exponential, memory must not be.
        let mut layer = vec![("V0".to_string(), seed)];
        for (i, (pat, back)) in ops.iter().enumerate() {
            let from = i.saturating_sub(*back);
            layer.push((format!("V{}", i + 1), format!("${{V{i}//{pat}/${{V{from}}}${{V{from}}}}}")));
        }
        let mut s = Scope::new();
        s.push_layer(layer);
        match s.resolve_all() {
            Ok(all) => prop_assert!(all.values().all(|v| v.len() <= trackside::pipeline::vars::MAX_LEN)),
            Err((_, e)) => prop_assert!(matches!(e, trackside::pipeline::vars::VarError::TooLong | trackside::pipeline::vars::VarError::TooMuch), "{e}"),
        }
    }

    #[test]
    fn a_nul_anywhere_is_an_error_at_its_position(at in any::<usize>()) {
        let at = DEMO.char_indices().map(|(i, _)| i).nth(at % DEMO.chars().count()).unwrap_or(0);
        let text = format!("{}\0{}", &DEMO[..at], &DEMO[at..]);
        let line = DEMO[..at].matches('\n').count() + 1;
        let col = DEMO[..at].rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        match parse_source(Path::new("nul.yml"), text, &LoadOptions::default()) {
            Ok(_) => prop_assert!(false, "a NUL at {line}:{col} was accepted"),
            Err(r) => prop_assert!(
                r.items.iter().any(|d| d.is_error() && d.line == line && d.column == col && d.message.contains("NUL")),
                "{:?}", r.items.iter().map(|d| format!("{}:{} {}", d.line, d.column, d.message)).collect::<Vec<_>>()
            ),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Finish(usize, Option<FailureClass>),
    RetryDue(usize),
    Approve(usize),
    Retry(usize),
    Cancel(usize),
    CancelAll,
    RerunFailed,
    Pause,
    Resume,
}

fn op() -> impl Strategy<Value = Op> {
    let class = prop_oneof![
        Just(None),
        Just(Some(FailureClass::Script)),
        Just(Some(FailureClass::Network)),
        Just(Some(FailureClass::Timeout)),
    ];
    prop_oneof![
        4 => (0..8usize, class).prop_map(|(j, c)| Op::Finish(j, c)),
        2 => (0..8usize).prop_map(Op::RetryDue),
        1 => (0..8usize).prop_map(Op::Approve),
        1 => (0..8usize).prop_map(Op::Retry),
        1 => (0..8usize).prop_map(Op::Cancel),
        1 => Just(Op::CancelAll),
        1 => Just(Op::RerunFailed),
        1 => Just(Op::Pause),
        1 => Just(Op::Resume),
    ]
}

const MACHINE: &str = "name: m\nretry_policy: {max_attempts: 2}\njobs:\n  a: {steps: [{script: x}]}\n  b: {depends_on: [a], steps: [{script: x}]}\n  c: {depends_on: [a], when: manual, steps: [{script: x}]}\n  d: {depends_on: [b, c], steps: [{script: x}]}\n  e: {steps: [{script: x}], allow_failure: true}\n  f: {depends_on: [e], when: on_failure, steps: [{script: x}]}\n  g: {depends_on: [d], when: always, steps: [{script: x}]}\n  h: {depends_on: [b], conditional: \"job.a.status == 'success'\", steps: [{script: x}]}\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn the_state_machine_keeps_its_invariants(ops in proptest::collection::vec(op(), 0..60), max_parallel in 1..4usize) {
        let (p, _) = parse_source(Path::new("m.yml"), MACHINE.into(), &LoadOptions::default()).expect("valid");
        let plan = Plan::build(&p).expect("plan");
        let mut m = RunState::new("r", p, plan, Options { max_parallel, finish_when_blocked: true, ..Options::default() });
        let mut t = 0u64;
        let mut finished_events = 0;
        let mut step = |m: &mut RunState, input: Input, t: u64| {
            let fx = m.handle(input, Duration::from_millis(t));
            for e in &fx {
                if matches!(e, Effect::Finished(_)) {
                    finished_events += 1;
                }
                // A job never starts before its dependencies are done.
                if let Effect::Start { job, .. } = e {
                    for &d in &m.plan().deps[*job] {
                        prop_assert!(m.status(d).is_terminal(), "job {job} started while dep {d} is {:?}", m.status(d));
                    }
                }
            }
            prop_assert!(m.running() <= max_parallel, "parallelism limit");
            Ok(())
        };
        step(&mut m, Input::Start, t)?;
        for o in ops {
            t += 10;
            let input = match o {
                Op::Finish(j, c) => Input::AttemptFinished {
                    job: j,
                    attempt: m.attempt(j),
                    outcome: match c { None => Outcome::success(), Some(c) => Outcome::failed(Some(1), c) },
                },
                Op::RetryDue(j) => Input::RetryDue { job: j },
                Op::Approve(j) => Input::Approve(j),
                Op::Retry(j) => Input::Retry(j),
                Op::Cancel(j) => Input::Cancel(j),
                Op::CancelAll => Input::CancelAll(CancelReason::User),
                Op::RerunFailed => Input::RerunFailed,
                Op::Pause => Input::Pause,
                Op::Resume => Input::Resume,
            };
            step(&mut m, input, t)?;
            for j in 0..8 {
                let s = m.status(j);
                // Nor is it queued before they are.
                if s == JobStatus::Ready {
                    for &d in &m.plan().deps[j] {
                        prop_assert!(m.status(d).is_terminal(), "job {j} {s:?} while dep {d} is {:?}", m.status(d));
                    }
                }
            }
            if m.is_finished() {
                for j in 0..8 {
                    let s = m.status(j);
                    prop_assert!(s.is_terminal() || s == JobStatus::WaitingApproval, "finished with job {j} {s:?}");
                }
            }
        }
        prop_assert!(finished_events <= 1 + 60, "bounded");
    }
}
