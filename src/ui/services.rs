//! The services view (`trackside services --ui`, or `S` from a run's
//! screen): every live service of the state directory with what serves,
//! its replicas' health, its last change, and the error-rate and latency
//! charts of its router's traffic, outside any rollout.
//!
//! A front-end like the run's screen: a view-model built from what its
//! feed sends ([`ServicesFeed`]), drawn by `impl Widget for &Services`; the
//! services themselves are steered elsewhere (`trackside service ...`).

use std::collections::{HashMap, VecDeque};

use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent, KeyEventKind};
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Widget};
use tokio::sync::mpsc;

use super::model::RolloutPoint;
use super::theme::Theme;
use crate::protocol::view::{ServiceOverview, ServicesFeed, ago_text};

/// Seconds of traffic kept per service (the charts' width).
pub const KEPT_POINTS: usize = 300;

pub struct Services {
    pub services: Vec<ServiceOverview>,
    /// Per service, its last [`KEPT_POINTS`] seconds, oldest first.
    pub traffic: HashMap<String, VecDeque<RolloutPoint>>,
    /// Per service, the requests of its last point's window, per pool.
    pub requests: HashMap<String, [u64; 2]>,
    pub selected: usize,
    pub theme: Theme,
    /// What the header names: the state directory.
    pub title: String,
    /// Whether an overview has arrived yet.
    pub loaded: bool,
}

impl Services {
    pub fn new(title: String, theme: Theme) -> Services {
        Services {
            services: Vec::new(),
            traffic: HashMap::new(),
            requests: HashMap::new(),
            selected: 0,
            theme,
            title,
            loaded: false,
        }
    }

    pub fn apply(&mut self, feed: ServicesFeed) {
        match feed {
            ServicesFeed::Overview(all) => {
                // The selection follows its service when the list changes.
                let name = self.services.get(self.selected).map(|s| s.name.clone());
                self.services = all;
                self.selected = name
                    .and_then(|n| self.services.iter().position(|s| s.name == n))
                    .unwrap_or(0);
                let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
                self.traffic.retain(|k, _| names.contains(&k.as_str()));
                self.requests.retain(|k, _| names.contains(&k.as_str()));
                self.loaded = true;
            }
            ServicesFeed::Point { service, point } => {
                let weight = self
                    .services
                    .iter()
                    .find(|s| s.name == service)
                    .map_or(0.0, |s| f64::from(s.weight) / 10.0);
                self.requests.insert(service.clone(), point.requests);
                let kept = self.traffic.entry(service).or_default();
                if kept.len() == KEPT_POINTS {
                    kept.pop_front();
                }
                kept.push_back(RolloutPoint {
                    t_s: point.t_s,
                    weight_pct: weight,
                    error_pct: point.error_rate.map(|e| e.map(|e| e * 100.0)),
                    p95_ms: point.p95_ms,
                });
            }
        }
    }

    /// A key; `false` when it leaves the view.
    pub fn handle_key(&mut self, key: KeyEvent) -> bool {
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc | KeyCode::Char('S') => return false,
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(self.services.len().saturating_sub(1));
            }
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            _ => {}
        }
        true
    }

    fn service_line(&self, s: &ServiceOverview, selected: bool) -> Line<'static> {
        let t = &self.theme;
        let up = s.replicas.iter().filter(|r| r.up).count();
        let split = match (&s.stable_version, &s.canary_version) {
            (Some(st), Some(c)) if s.weight > 0 => format!(
                "{st} {} / {c} {}",
                crate::protocol::view::percent(1000 - s.weight.min(1000)),
                crate::protocol::view::percent(s.weight)
            ),
            (Some(st), _) => format!("{st} 100%"),
            _ => "-".into(),
        };
        let state_style = match s.state.as_str() {
            "serving" if s.degraded.is_none() => t.fg(ratatui::style::Color::Green),
            "serving" => t.warn(),
            _ => t.error(),
        };
        let state = if s.degraded.is_some() {
            "degraded"
        } else {
            s.state.as_str()
        };
        let mark = if selected { t.glyph("▶ ", "> ") } else { "  " };
        Line::from(vec![
            Span::raw(mark.to_string()),
            Span::styled(
                format!("{:<14} ", s.name),
                if selected { t.selected() } else { t.title() },
            ),
            Span::styled(format!("{state:<11} "), state_style),
            Span::raw(format!("{split:<20} ")),
            Span::styled(format!("{up}/{} up  ", s.replicas.len()), t.dim()),
            Span::styled(format!("http://{}", s.listen), t.dim()),
        ])
    }

    fn detail_lines(&self, s: &ServiceOverview) -> Vec<Line<'static>> {
        let t = &self.theme;
        let mut lines = Vec::new();
        if let Some(d) = &s.degraded {
            lines.push(Line::from(Span::styled(format!("DEGRADED: {d}"), t.warn())));
        }
        if let Some(c) = &s.last_change {
            let ago = s.last_change_ms.map_or(String::new(), |at| {
                let secs = crate::protocol::clock::now_ms().saturating_sub(at) / 1000;
                format!(" ({} ago)", ago_text(secs))
            });
            lines.push(Line::from(vec![
                Span::styled("last change: ", t.dim()),
                Span::raw(format!("{c}{ago}")),
            ]));
        }
        if let Some([stable, canary]) = self.requests.get(&s.name) {
            // The window is two seconds.
            lines.push(Line::from(vec![
                Span::styled("traffic: ", t.dim()),
                Span::raw(format!(
                    "{} req/s (stable {}, canary {})",
                    (stable + canary) / 2,
                    stable / 2,
                    canary / 2
                )),
            ]));
        }
        for r in &s.replicas {
            let (health, style) = if r.up {
                ("up", t.fg(ratatui::style::Color::Green))
            } else {
                ("DOWN", t.error())
            };
            let restarts = if r.restarts > 0 {
                format!(", restarted {}x", r.restarts)
            } else {
                String::new()
            };
            lines.push(Line::from(vec![
                Span::raw(format!("  {:<16} {:<8} {:<21} ", r.name, r.version, r.addr)),
                Span::styled(health.to_string(), style),
                Span::styled(format!("  {}{restarts}", r.role), t.dim()),
            ]));
        }
        lines
    }
}

impl Widget for &Services {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let t = &self.theme;
        if area.height < 3 || area.width < 10 {
            return;
        }
        let place = match self.title.is_empty() {
            true => String::new(),
            false => format!(" │ {}", self.title),
        };
        let header = Line::from(vec![
            Span::styled("trackside", t.title()),
            Span::styled(format!(" │ services{place}"), t.dim()),
        ]);
        Paragraph::new(header).render(Rect { height: 1, ..area }, buf);
        let footer_y = area.y + area.height - 1;
        let footer = format!(
            "{} select · q back · steer with `trackside service NAME ...`",
            t.glyph("↑/↓", "up/down")
        );
        Paragraph::new(Line::styled(footer, t.dim())).render(
            Rect {
                y: footer_y,
                height: 1,
                ..area
            },
            buf,
        );
        let body = Rect {
            y: area.y + 1,
            height: area.height.saturating_sub(2),
            ..area
        };
        if self.services.is_empty() {
            let text = if self.loaded {
                "no live service here: a deploy with the built-in router and a `run:` target makes one"
            } else {
                "reading the services..."
            };
            Paragraph::new(Line::styled(text, t.dim()))
                .wrap(ratatui::widgets::Wrap { trim: true })
                .render(body, buf);
            return;
        }
        // The list: at most a third of the body.
        let list_h = (self.services.len() as u16).min((body.height / 3).max(1));
        let first = self.selected.saturating_sub(usize::from(list_h).saturating_sub(1));
        let list: Vec<Line> = self
            .services
            .iter()
            .enumerate()
            .skip(first)
            .take(usize::from(list_h))
            .map(|(i, s)| self.service_line(s, i == self.selected))
            .collect();
        Paragraph::new(list).render(Rect { height: list_h, ..body }, buf);
        let Some(s) = self.services.get(self.selected) else {
            return;
        };
        let rest = Rect {
            y: body.y + list_h,
            height: body.height.saturating_sub(list_h),
            ..body
        };
        let detail = self.detail_lines(s);
        let detail_h = (detail.len() as u16 + 1).min(rest.height);
        Paragraph::new(detail).render(
            Rect {
                y: rest.y + 1,
                height: detail_h.saturating_sub(1),
                ..rest
            },
            buf,
        );
        let charts = Rect {
            y: rest.y + detail_h,
            height: rest.height.saturating_sub(detail_h),
            ..rest
        };
        let points: Vec<RolloutPoint> = self
            .traffic
            .get(&s.name)
            .map(|p| p.iter().cloned().collect())
            .unwrap_or_default();
        if s.state != "serving" {
            let text = "not serving: no traffic to chart (`trackside service NAME start` starts it again)";
            Paragraph::new(Line::styled(text, t.dim())).render(charts, buf);
        } else if points.len() < 2 {
            Paragraph::new(Line::styled("waiting for a few seconds of traffic...", t.dim())).render(charts, buf);
        } else if charts.height >= 8 {
            super::render::render_rollout_charts(&points, [None, None], t, charts, buf);
        } else {
            Paragraph::new(super::render::trend_lines(&points, charts.width, t)).render(charts, buf);
        }
    }
}

/// Shows the services view on `terminal` until the person leaves it (or
/// the feed ends), reading keys from `input`.
pub(super) async fn show<B: ratatui::backend::Backend>(
    terminal: &mut ratatui::Terminal<B>,
    input: &mut mpsc::Receiver<TermEvent>,
    mut feed: mpsc::Receiver<ServicesFeed>,
    mut view: Services,
) -> std::io::Result<()>
where
    std::io::Error: From<B::Error>,
{
    let mut dirty = true;
    loop {
        if dirty {
            terminal.draw(|f| f.render_widget(&view, f.area()))?;
            dirty = false;
        }
        tokio::select! {
            biased;
            ev = input.recv() => match ev {
                Some(TermEvent::Key(k)) if k.kind != KeyEventKind::Release => {
                    if !view.handle_key(k) {
                        return Ok(());
                    }
                    dirty = true;
                }
                Some(TermEvent::Resize(..)) => dirty = true,
                Some(_) => {}
                None => return Ok(()),
            },
            f = feed.recv() => match f {
                Some(f) => {
                    view.apply(f);
                    // What else is queued, before drawing.
                    while let Ok(more) = feed.try_recv() {
                        view.apply(more);
                    }
                    dirty = true;
                }
                None => return Ok(()),
            },
        }
    }
}

/// `trackside services --ui`: the services view on its own, until `q`.
pub async fn run(
    feed: mpsc::Receiver<ServicesFeed>,
    title: String,
    opts: super::UiOptions,
) -> Result<(), super::UiError> {
    let guard = super::TerminalGuard::enter(false)?;
    let mut terminal = ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut input = super::spawn_input(stop.clone(), super::InputPause::default());
    let view = Services::new(
        title,
        Theme {
            color: opts.color,
            ascii: opts.ascii,
        },
    );
    let shown = show(&mut terminal, &mut input, feed, view).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(guard);
    shown.map_err(super::UiError::Terminal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::view::{ServicePoint, ServiceReplica};

    fn overview(name: &str) -> ServiceOverview {
        ServiceOverview {
            name: name.into(),
            listen: "127.0.0.1:8080".into(),
            state: "serving".into(),
            stable_version: Some("v1".into()),
            canary_version: Some("v2".into()),
            weight: 250,
            degraded: None,
            replicas: vec![
                ServiceReplica {
                    name: "web-v1-1".into(),
                    version: "v1".into(),
                    addr: "127.0.0.1:41001".into(),
                    role: "stable".into(),
                    up: true,
                    restarts: 0,
                },
                ServiceReplica {
                    name: "web-v2-1".into(),
                    version: "v2".into(),
                    addr: "127.0.0.1:41002".into(),
                    role: "canary".into(),
                    up: false,
                    restarts: 3,
                },
            ],
            last_change: Some("v1 promoted by ada@host".into()),
            last_change_ms: None,
        }
    }

    fn text(view: &Services, w: u16, h: u16) -> String {
        let mut buf = Buffer::empty(Rect::new(0, 0, w, h));
        view.render(buf.area, &mut buf);
        (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn services_health_and_traffic_at_80x24() {
        let mut v = Services::new(
            "/srv/trackside".into(),
            Theme {
                color: false,
                ascii: false,
            },
        );
        assert!(text(&v, 80, 24).contains("reading the services"));
        v.apply(ServicesFeed::Overview(vec![overview("api"), overview("web")]));
        assert!(text(&v, 80, 24).contains("waiting for a few seconds of traffic"));
        for i in 0..30 {
            v.apply(ServicesFeed::Point {
                service: "api".into(),
                point: ServicePoint {
                    t_s: f64::from(i),
                    requests: [100, 30],
                    error_rate: [Some(0.0), Some(0.02 * f64::from(i % 3))],
                    p95_ms: [Some(6.0), Some(9.0)],
                },
            });
        }
        let shown = text(&v, 80, 24);
        for want in [
            "api            serving     v1 75.0% / v2 25.0%",
            "1/2 up",
            "last change: v1 promoted by ada@host",
            "web-v2-1",
            "DOWN",
            "restarted 3x",
            "err%",
            "traffic: 65 req/s (stable 50, canary 15)",
        ] {
            assert!(shown.contains(want), "missing {want:?}:\n{shown}");
        }
        // Down to the next service, and the selection follows it.
        v.handle_key(KeyEvent::from(KeyCode::Down));
        v.apply(ServicesFeed::Overview(vec![overview("web"), overview("api")]));
        assert_eq!(v.services[v.selected].name, "web");
        assert!(!v.handle_key(KeyEvent::from(KeyCode::Char('q'))), "q leaves");
        // Points are bounded per service.
        for i in 0..(KEPT_POINTS + 10) {
            v.apply(ServicesFeed::Point {
                service: "web".into(),
                point: ServicePoint {
                    t_s: i as f64,
                    requests: [1, 0],
                    error_rate: [Some(0.0), None],
                    p95_ms: [Some(1.0), None],
                },
            });
        }
        assert_eq!(v.traffic["web"].len(), KEPT_POINTS);
        // A service that went away takes its traffic with it.
        v.apply(ServicesFeed::Overview(vec![overview("api")]));
        assert!(!v.traffic.contains_key("web"));
    }
}
