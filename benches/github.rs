//! The GitHub dialect's benchmark behind docs/BENCHMARKS.md:
//! `cargo bench --bench github`.
//!
//! Parse, check and plan a workflow of 40 written jobs whose matrices
//! expand to 5,000 jobs (20 matrices of 250, each with `include` and
//! `exclude`, expressions in names and steps), the other 20 needing them.
//! Target: under 200 ms.

#[path = "support/stats.rs"]
mod stats;
use stats::stats;

use std::time::Instant;

use trackside::pipeline::{Dialect, LoadOptions, Plan, load};

fn workflow() -> String {
    let mut s = String::from("name: big\non:\n  push:\n    branches: [main]\nenv:\n  APP: shop\njobs:\n");
    for m in 0..20 {
        // 5 x 5 x 10 = 250, one excluded and one added back by include.
        s.push_str(&format!(
            "  test-{m}:\n    runs-on: ubuntu-latest\n    strategy:\n      fail-fast: false\n      matrix:\n        os: [a, b, c, d, e]\n        py: ['3.9', '3.10', '3.11', '3.12', '3.13']\n        shard: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n        exclude:\n          - {{os: a, py: '3.9', shard: 0}}\n        include:\n          - {{os: a, py: '3.9', shard: 0, extra: yes}}\n    env:\n      SHARD: ${{{{ matrix.shard }}}}\n    steps:\n      - uses: actions/checkout@v4\n      - name: Test ${{{{ matrix.os }}}} ${{{{ matrix.py }}}}\n        run: |\n          echo \"${{{{ github.repository }}}} ${{{{ matrix.os }}}}/${{{{ matrix.py }}}} shard ${{{{ matrix.shard }}}} of ${{{{ strategy.job-total }}}}\"\n          make test SHARD=$SHARD\n        shell: bash\n"
        ));
        s.push_str(&format!(
            "  report-{m}:\n    needs: [test-{m}]\n    if: github.ref == 'refs/heads/main'\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo report {m} ${{{{ env.APP }}}}\n"
        ));
    }
    s
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ci.yml");
    std::fs::write(&file, workflow()).expect("write");
    let opts = LoadOptions {
        dialect: Some(Dialect::Github),
        ci_vars: vec![
            ("GITHUB_REF".into(), "refs/heads/main".into()),
            ("GITHUB_REF_NAME".into(), "main".into()),
        ],
        ..LoadOptions::default()
    };
    let mut samples = Vec::new();
    for _ in 0..11 {
        let t = Instant::now();
        let (p, _) = load(&file, &opts).unwrap_or_else(|r| panic!("{}", r.render(false)));
        let plan = Plan::build(&p).unwrap_or_else(|_| panic!("cycle"));
        samples.push(t.elapsed());
        assert_eq!(p.jobs.len(), 5_020);
        assert_eq!(plan.levels.len(), 2);
    }
    stats(
        "GitHub: parse+check+plan, 40 jobs -> 5,020 (20 matrices of 250)",
        samples,
        "< 200 ms",
    );
}
