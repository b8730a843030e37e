//! Key bindings: one table that drives key handling, the footer and the
//! help overlay, so they can never disagree.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Up,
    Down,
    Left,
    Right,
    NextPane,
    OpenLog,
    Approve,
    Retry,
    /// Close the circuit breaker holding the selected job (or the open one).
    CloseBreaker,
    RerunFailed,
    Cancel,
    CancelAll,
    TogglePause,
    ToggleFollow,
    ToggleWrap,
    ToggleGroups,
    ToggleList,
    Search,
    NextMatch,
    PrevMatch,
    PageUp,
    PageDown,
    Top,
    Bottom,
    PrevAttempt,
    NextAttempt,
    Shell,
    /// The selected job's test cases (failed first).
    Tests,
    /// The pipeline's recent runs: durations, failures, flakiest jobs.
    Dashboard,
    /// The live services of the state directory.
    Services,
    /// The swarm's nodes (`--executor swarm`).
    Nodes,
    Promote,
    PromoteFull,
    AbortRollout,
    Rollback,
    HoldRollout,
    Help,
    Detach,
    Quit,
}

impl Action {
    /// Steers the selected deploy job's rollout.
    pub fn is_rollout(self) -> bool {
        matches!(
            self,
            Action::Promote | Action::PromoteFull | Action::AbortRollout | Action::Rollback | Action::HoldRollout
        )
    }
}

/// Where a binding applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Everywhere,
    /// The DAG / job list pane.
    Jobs,
    /// The log pane.
    Log,
}

pub struct Binding {
    pub keys: &'static [KeyCode],
    /// How the keys are written in help and footer.
    pub shown: &'static str,
    pub action: Action,
    pub scope: Scope,
    /// Short footer label; empty = not in the footer.
    pub label: &'static str,
    pub help: &'static str,
}

const fn b(
    keys: &'static [KeyCode],
    shown: &'static str,
    action: Action,
    scope: Scope,
    label: &'static str,
    help: &'static str,
) -> Binding {
    Binding {
        keys,
        shown,
        action,
        scope,
        label,
        help,
    }
}

use Action as A;
use KeyCode as K;
use Scope as S;

/// Every key trackside's UI knows, in help order.
pub const BINDINGS: &[Binding] = &[
    b(
        &[K::Up, K::Char('k')],
        "↑/k",
        A::Up,
        S::Everywhere,
        "",
        "previous job / scroll the log up",
    ),
    b(
        &[K::Down, K::Char('j')],
        "↓/j",
        A::Down,
        S::Everywhere,
        "",
        "next job / scroll the log down",
    ),
    b(
        &[K::Left, K::Char('h')],
        "←/h",
        A::Left,
        S::Jobs,
        "",
        "job in the previous level (DAG)",
    ),
    b(
        &[K::Right, K::Char('l')],
        "→/l",
        A::Right,
        S::Jobs,
        "",
        "job in the next level (DAG)",
    ),
    b(
        &[K::Tab, K::BackTab],
        "Tab",
        A::NextPane,
        S::Everywhere,
        "pane",
        "switch pane (jobs, log, detail)",
    ),
    b(
        &[K::Enter],
        "Enter",
        A::OpenLog,
        S::Jobs,
        "log",
        "open the selected job's log",
    ),
    b(
        &[K::Char('a')],
        "a",
        A::Approve,
        S::Everywhere,
        "approve",
        "approve the selected manual gate (asks first)",
    ),
    b(
        &[K::Char('r')],
        "r",
        A::Retry,
        S::Everywhere,
        "retry",
        "retry the selected failed or cancelled job",
    ),
    b(
        &[K::Char('R')],
        "R",
        A::RerunFailed,
        S::Everywhere,
        "rerun failed",
        "rerun every failed job",
    ),
    b(
        &[K::Char('s')],
        "s",
        A::Shell,
        S::Everywhere,
        "shell",
        "shell in the selected failed container job",
    ),
    b(
        &[K::Char('t')],
        "t",
        A::Tests,
        S::Everywhere,
        "tests",
        "the selected job's failed test cases, with their messages and the log lines that name them",
    ),
    b(
        &[K::Char('D')],
        "D",
        A::Dashboard,
        S::Everywhere,
        "history",
        "the pipeline's recent runs: durations, failure rate, flakiest jobs, failure classes",
    ),
    b(
        &[K::Char('o')],
        "o",
        A::Nodes,
        S::Everywhere,
        "",
        "the swarm's nodes (--executor swarm): state, labels, load, this run's jobs on each",
    ),
    b(
        &[K::Char('B')],
        "B",
        A::CloseBreaker,
        S::Everywhere,
        "close circuit",
        "close the circuit breaker holding the selected job (or the open one): held jobs start",
    ),
    b(
        &[K::Char('S')],
        "S",
        A::Services,
        S::Everywhere,
        "services",
        "the live services of this state directory: what serves, replica health, live error-rate and latency charts (q comes back)",
    ),
    b(
        &[K::Char('c')],
        "c",
        A::Cancel,
        S::Everywhere,
        "cancel",
        "cancel the selected job (asks first)",
    ),
    b(
        &[K::Char('C')],
        "C",
        A::CancelAll,
        S::Everywhere,
        "cancel all",
        "cancel the whole run (asks first)",
    ),
    b(
        &[K::Char('p')],
        "p",
        A::TogglePause,
        S::Everywhere,
        "pause",
        "pause / resume starting new jobs",
    ),
    b(
        &[K::Char('f')],
        "f",
        A::ToggleFollow,
        S::Everywhere,
        "follow",
        "follow the log tail on/off",
    ),
    b(
        &[K::Char('w')],
        "w",
        A::ToggleWrap,
        S::Log,
        "wrap",
        "wrap long log lines on/off",
    ),
    b(
        &[K::Char('z')],
        "z",
        A::ToggleGroups,
        S::Log,
        "unfold",
        "fold / unfold the log's ended groups (GitHub's ::group::)",
    ),
    b(
        &[K::Char('m')],
        "m",
        A::ToggleList,
        S::Jobs,
        "list",
        "DAG or compact list of jobs",
    ),
    b(
        &[K::Char('/')],
        "/",
        A::Search,
        S::Everywhere,
        "search",
        "search the log / filter jobs by name",
    ),
    b(&[K::Char('n')], "n", A::NextMatch, S::Log, "", "next search match"),
    b(&[K::Char('N')], "N", A::PrevMatch, S::Log, "", "previous search match"),
    b(&[K::PageUp], "PgUp", A::PageUp, S::Everywhere, "", "page up"),
    b(&[K::PageDown], "PgDn", A::PageDown, S::Everywhere, "", "page down"),
    b(
        &[K::Char('g'), K::Home],
        "g",
        A::Top,
        S::Everywhere,
        "",
        "first line / first job",
    ),
    b(
        &[K::Char('G'), K::End],
        "G",
        A::Bottom,
        S::Everywhere,
        "",
        "last line / last job",
    ),
    b(
        &[K::Char('[')],
        "[",
        A::PrevAttempt,
        S::Everywhere,
        "",
        "previous attempt of a retried job",
    ),
    b(&[K::Char(']')], "]", A::NextAttempt, S::Everywhere, "", "next attempt"),
    b(
        &[K::Char('P')],
        "P",
        A::Promote,
        S::Everywhere,
        "promote",
        "rollout: promote the selected deploy job one step",
    ),
    b(
        &[K::Char('F')],
        "F",
        A::PromoteFull,
        S::Everywhere,
        "100%",
        "rollout: 100% now (type the service name to confirm)",
    ),
    b(
        &[K::Char('A')],
        "A",
        A::AbortRollout,
        S::Everywhere,
        "abort",
        "rollout: abort now (canary to 0%, stable keeps serving)",
    ),
    b(
        &[K::Char('b')],
        "b",
        A::Rollback,
        S::Everywhere,
        "rollback",
        "rollout: roll back to the previous revision",
    ),
    b(
        &[K::Char('H')],
        "H",
        A::HoldRollout,
        S::Everywhere,
        "hold",
        "rollout: hold (timers frozen) / resume",
    ),
    b(&[K::Char('?')], "?", A::Help, S::Everywhere, "help", "this help"),
    b(
        &[K::Char('d')],
        "d",
        A::Detach,
        S::Everywhere,
        "",
        "detach: leave the run going (`trackside attach` comes back to it)",
    ),
    b(
        &[K::Char('q')],
        "q",
        A::Quit,
        S::Everywhere,
        "quit",
        "quit (asks first while jobs run; cancels them)",
    ),
];

/// The footer's order, most useful first: a rollout's keys (at 80 columns
/// they are what matters while one runs), what applies to the selected job,
/// finding one's way through a big run (`/`, `m`, which must not drop off
/// while jobs run), then the run as a whole. Help and quit always end it.
/// Every binding with a footer label is here (a test checks).
pub const FOOTER_ORDER: &[Action] = &[
    A::Promote,
    A::PromoteFull,
    A::AbortRollout,
    A::Rollback,
    A::HoldRollout,
    A::Approve,
    A::Retry,
    A::CloseBreaker,
    A::Shell,
    A::Tests,
    A::OpenLog,
    A::Search,
    A::ToggleList,
    A::ToggleFollow,
    A::ToggleWrap,
    A::ToggleGroups,
    A::Cancel,
    A::RerunFailed,
    A::TogglePause,
    A::CancelAll,
    A::Dashboard,
    A::NextPane,
    A::Services,
    A::Help,
    A::Quit,
];

/// The action a key means in `scope`. Ctrl-C means quit.
pub fn action_for(key: &KeyEvent, scope: Scope) -> Option<Action> {
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return match key.code {
            KeyCode::Char('c') => Some(Action::Quit),
            KeyCode::Char('u') => Some(Action::PageUp),
            KeyCode::Char('d') => Some(Action::PageDown),
            _ => None,
        };
    }
    BINDINGS
        .iter()
        .filter(|b| b.scope == Scope::Everywhere || b.scope == scope)
        .find(|b| b.keys.contains(&key.code))
        .map(|b| b.action)
}

pub fn binding(action: Action) -> Option<&'static Binding> {
    BINDINGS.iter().find(|b| b.action == action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_means_two_things_in_one_scope() {
        for scope in [Scope::Jobs, Scope::Log] {
            let mut seen: Vec<KeyCode> = Vec::new();
            for b in BINDINGS
                .iter()
                .filter(|b| b.scope == Scope::Everywhere || b.scope == scope)
            {
                for k in b.keys {
                    assert!(!seen.contains(k), "{k:?} bound twice in {scope:?}");
                    seen.push(*k);
                }
            }
        }
    }

    #[test]
    fn every_footer_key_has_a_place_in_the_footer_order() {
        for b in BINDINGS.iter().filter(|b| !b.label.is_empty()) {
            assert!(
                FOOTER_ORDER.contains(&b.action),
                "{:?} is not in FOOTER_ORDER",
                b.action
            );
        }
        for a in FOOTER_ORDER {
            assert!(
                binding(*a).is_some_and(|b| !b.label.is_empty()),
                "{a:?} has no footer label"
            );
        }
    }

    #[test]
    fn keys_resolve_by_scope() {
        let key = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE);
        assert_eq!(action_for(&key('a'), Scope::Jobs), Some(Action::Approve));
        assert_eq!(action_for(&key('n'), Scope::Log), Some(Action::NextMatch));
        assert_eq!(action_for(&key('n'), Scope::Jobs), None);
        assert_eq!(action_for(&key('h'), Scope::Jobs), Some(Action::Left));
        assert_eq!(
            action_for(&KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), Scope::Jobs),
            Some(Action::Quit)
        );
    }
}
