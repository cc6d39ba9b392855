//! A `tracing` layer that keeps every event and span it sees, for tests that
//! check what the engine logs. The engine logs from its own thread, so a
//! test installs it as the process-global subscriber (one test function per
//! binary that does).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// One captured event: its level and fields (`message` included).
#[derive(Debug, Clone)]
pub struct Captured {
    pub level: Level,
    pub fields: BTreeMap<String, String>,
}

/// One captured span: its id, name, fields and parent's id.
#[derive(Debug, Clone)]
pub struct Opened {
    pub id: u64,
    pub name: &'static str,
    pub fields: BTreeMap<String, String>,
    pub parent: Option<u64>,
}

/// The events and spans seen so far.
#[derive(Clone, Default)]
pub struct Capture {
    events: Arc<Mutex<Vec<Captured>>>,
    spans: Arc<Mutex<Vec<Opened>>>,
}

/// A failed assertion holding a list must not make the engine's thread
/// panic when it logs next: a poisoned list is still read.
fn unpoisoned<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = match attrs.parent() {
            Some(p) => Some(p.into_u64()),
            None if attrs.is_contextual() => ctx.current_span().id().map(tracing::Id::into_u64),
            None => None,
        };
        unpoisoned(&self.spans).push(Opened {
            id: id.into_u64(),
            name: attrs.metadata().name(),
            fields,
            parent,
        });
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        unpoisoned(&self.events).push(Captured {
            level: *event.metadata().level(),
            fields,
        });
    }
}

impl Capture {
    /// Every event so far.
    pub fn events(&self) -> MutexGuard<'_, Vec<Captured>> {
        unpoisoned(&self.events)
    }

    /// Every span so far.
    pub fn spans(&self) -> MutexGuard<'_, Vec<Opened>> {
        unpoisoned(&self.spans)
    }

    /// Events at `level` whose fields include every pair of `want`, and
    /// whose message starts with `message`.
    pub fn find(&self, level: Level, message: &str, want: &[(&str, &str)]) -> Vec<Captured> {
        self.events()
            .iter()
            .filter(|e| e.level == level)
            .filter(|e| {
                e.fields
                    .get("message")
                    .is_some_and(|m| m.starts_with(message))
            })
            .filter(|e| {
                want.iter()
                    .all(|(k, v)| e.fields.get(*k).map(String::as_str) == Some(*v))
            })
            .cloned()
            .collect()
    }
}
