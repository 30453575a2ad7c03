//! Checks a recorded history: per-note linearizability of a versioned
//! register, create idempotency, no lost acknowledged write, no ownership
//! leak.
//!
//! Every write has content of its own and every note reports its version,
//! so the order of a note's writes is read off the history instead of
//! searched for (as Elle does with version orders): version `v` was
//! produced by the write whose content is seen at `v`, or, where no one saw
//! `v`, by some write whose outcome is unknown. Then the checker asks
//! whether the writes could have taken effect in version order, each inside
//! its call (a write with an unknown outcome any time after it was invoked),
//! with every read between the version it saw and the next, and the delete
//! last. Anything else is an anomaly: a write seen at two versions (applied
//! twice), two writes at one version, a refused write that was applied, a
//! conditional write at another version than it asked for, a version no
//! write explains, a create that made two notes, a note that vanished, a
//! note seen by another owner, or writes and reads that cannot be ordered
//! in real time (a stale read, a lost acknowledged write).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::history::{Call, History, Op, Outcome, Seen};

/// Something the history shows that a correct service would not do.
#[derive(Debug, Clone)]
pub struct Anomaly {
    pub kind: &'static str,
    pub note: Option<String>,
    pub detail: String,
    /// When it happened, roughly: the excerpt is taken around it.
    pub at: f64,
}

/// A note's state as one call saw it: `version` with `content`, between
/// `invoke` and `complete`; `read` unless it is a write's own reply.
struct Reading<'a> {
    version: i64,
    content: &'a str,
    invoke: f64,
    complete: f64,
    read: bool,
}

#[derive(Default)]
struct NoteFacts<'a> {
    owner: Option<&'a str>,
    readings: Vec<Reading<'a>>,
    /// Calls that found it gone, (invoke, complete).
    absent: Vec<(f64, f64)>,
}

fn window(op: &Op) -> (f64, f64) {
    match op.outcome {
        Outcome::Note(_) | Outcome::Notes(..) | Outcome::Deleted => (op.invoke, op.complete),
        _ => (op.invoke, f64::INFINITY),
    }
}

/// Every anomaly in `history`.
pub fn check(history: &History) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let ops = &history.ops;
    let mut writer: HashMap<&str, usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let Some(content) = op.call.content()
            && writer.insert(content, i).is_some()
        {
            anomalies.push(Anomaly {
                kind: "workload: content written twice",
                note: None,
                detail: content.to_owned(),
                at: op.invoke,
            });
        }
    }

    // Notes whose create was acknowledged, by owner, with when.
    let mut created: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let (Call::Create { .. }, Outcome::Note(n)) = (&op.call, &op.outcome) {
            created.insert(&n.id, (i, op.complete));
        }
    }

    let mut notes: BTreeMap<&str, NoteFacts> = BTreeMap::new();
    let observe = |anomalies: &mut Vec<Anomaly>, caller: &str, n: &Seen, at: f64| {
        if n.owner != caller {
            anomalies.push(Anomaly {
                kind: "note seen by another owner",
                note: Some(n.id.clone()),
                detail: format!("{caller} saw a note of {}", n.owner),
                at,
            });
        }
        if let Some(w) = writer.get(n.content.as_str())
            && ops[*w].owner != caller
        {
            anomalies.push(Anomaly {
                kind: "note seen by another owner",
                note: Some(n.id.clone()),
                detail: format!("{caller} saw content written by {}", ops[*w].owner),
                at,
            });
        }
    };
    for op in ops {
        match &op.outcome {
            Outcome::Note(n) => {
                let read = !op.call.is_write();
                observe(&mut anomalies, &op.owner, n, op.invoke);
                let facts = notes.entry(&n.id).or_default();
                facts.owner.get_or_insert(&op.owner);
                facts.readings.push(Reading {
                    version: n.version,
                    content: &n.content,
                    invoke: op.invoke,
                    complete: op.complete,
                    read,
                });
            }
            Outcome::Notes(list, all) => {
                let listed: HashSet<&str> = list.iter().map(|n| n.id.as_str()).collect();
                for n in list {
                    observe(&mut anomalies, &op.owner, n, op.invoke);
                    let facts = notes.entry(&n.id).or_default();
                    facts.owner.get_or_insert(&op.owner);
                    facts.readings.push(Reading {
                        version: n.version,
                        content: &n.content,
                        invoke: op.invoke,
                        complete: op.complete,
                        read: true,
                    });
                }
                if *all {
                    for (id, (create, done)) in &created {
                        if ops[*create].owner == op.owner
                            && *done < op.invoke
                            && !listed.contains(id)
                        {
                            notes
                                .entry(id)
                                .or_default()
                                .absent
                                .push((op.invoke, op.complete));
                        }
                    }
                }
            }
            Outcome::Failed(tonic::Code::NotFound, _) => {
                if let Some(id) = op.call.note() {
                    notes
                        .entry(id)
                        .or_default()
                        .absent
                        .push((op.invoke, op.complete));
                }
            }
            _ => {}
        }
    }
    for (owner, stored) in &history.final_state {
        let listed: HashSet<&str> = stored.iter().map(|n| n.id.as_str()).collect();
        for n in stored {
            observe(&mut anomalies, owner, n, history.end);
            notes.entry(&n.id).or_default().readings.push(Reading {
                version: n.version,
                content: &n.content,
                invoke: history.end,
                complete: history.end,
                read: true,
            });
        }
        for (id, (create, _)) in &created {
            if ops[*create].owner == *owner && !listed.contains(id) {
                notes
                    .entry(id)
                    .or_default()
                    .absent
                    .push((history.end, history.end));
            }
        }
    }

    // Creates: one note each.
    let mut notes_of_create: HashMap<usize, BTreeSet<&str>> = HashMap::new();
    for (id, facts) in &notes {
        for r in facts.readings.iter().filter(|r| r.version == 1) {
            match writer.get(r.content) {
                Some(w) if matches!(ops[*w].call, Call::Create { .. }) => {
                    notes_of_create.entry(*w).or_default().insert(id);
                }
                _ => anomalies.push(Anomaly {
                    kind: "version 1 is not a create",
                    note: Some((*id).to_owned()),
                    detail: format!("content {:?}", r.content),
                    at: r.invoke,
                }),
            }
        }
    }
    for (create, ids) in &notes_of_create {
        if ids.len() > 1 {
            anomalies.push(Anomaly {
                kind: "a create made two notes",
                note: ids.iter().next().map(|s| (*s).to_owned()),
                detail: format!("{} made {ids:?}", ops[*create]),
                at: ops[*create].invoke,
            });
        }
    }

    for (id, facts) in &notes {
        check_note(ops, &writer, id, facts, &mut anomalies);
    }
    anomalies
}

/// The anomalies of one note's history.
fn check_note(
    ops: &[Op],
    writer: &HashMap<&str, usize>,
    id: &str,
    facts: &NoteFacts,
    anomalies: &mut Vec<Anomaly>,
) {
    let mut found = |kind: &'static str, detail: String, at: f64| {
        anomalies.push(Anomaly {
            kind,
            note: Some(id.to_owned()),
            detail,
            at,
        });
    };
    let mut at_version: BTreeMap<i64, BTreeSet<&str>> = BTreeMap::new();
    let mut versions_of: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for r in &facts.readings {
        at_version.entry(r.version).or_default().insert(r.content);
        versions_of.entry(r.content).or_default().insert(r.version);
    }
    let first_seen = |content: &str| {
        facts
            .readings
            .iter()
            .filter(|r| r.content == content)
            .map(|r| r.invoke)
            .fold(f64::INFINITY, f64::min)
    };
    for (version, contents) in &at_version {
        if contents.len() > 1 {
            found(
                "two writes at one version",
                format!("v{version}: {contents:?}"),
                first_seen(contents.iter().next().unwrap()),
            );
        }
    }
    for (content, versions) in &versions_of {
        let at = first_seen(content);
        if versions.len() > 1 {
            found(
                "a write applied twice",
                format!("{content:?} at versions {versions:?}"),
                at,
            );
        }
        let Some(&w) = writer.get(content) else {
            found("content no call wrote", format!("{content:?}"), at);
            continue;
        };
        let op = &ops[w];
        if let Some(note) = op.call.note()
            && note != id
        {
            found("a write landed on another note", format!("{op}"), at);
        }
        if let Outcome::Failed(code, _) = &op.outcome {
            found(
                "a refused write was applied",
                format!("{op} (answered {code:?})"),
                at,
            );
        }
        if let Call::Update { expected, .. } = &op.call
            && *expected > 0
            && versions.iter().any(|v| *v != expected + 1)
        {
            found(
                "a conditional write applied at another version",
                format!("{op} seen at {versions:?}"),
                at,
            );
        }
    }

    // The writes of versions 1..=last, and their windows.
    let last = at_version.keys().copied().max().unwrap_or(0);
    let mut used: HashSet<usize> = at_version
        .values()
        .flat_map(|c| c.iter().filter_map(|c| writer.get(c).copied()))
        .collect();
    let mut windows: Vec<(f64, f64)> = Vec::with_capacity(last.max(0) as usize);
    for version in 1..=last {
        let known = at_version
            .get(&version)
            .and_then(|c| c.iter().next())
            .and_then(|c| writer.get(c));
        let w = match known {
            Some(&w) => Some(w),
            None => {
                // A write whose outcome is unknown and whose content no one
                // saw: a conditional one at exactly this version first.
                let candidate = |conditional: bool| {
                    ops.iter()
                        .enumerate()
                        .filter(|(i, op)| {
                            !used.contains(i)
                                && matches!(op.outcome, Outcome::Unknown(_))
                                && matches!(&op.call, Call::Update { note, expected, .. }
                                    if note == id && if conditional { *expected == version - 1 } else { *expected == 0 })
                        })
                        .min_by(|a, b| a.1.invoke.total_cmp(&b.1.invoke))
                        .map(|(i, _)| i)
                };
                let pick = candidate(true).or_else(|| candidate(false));
                if let Some(w) = pick {
                    used.insert(w);
                } else {
                    found(
                        "a version no write explains",
                        format!(
                            "v{version} was never seen and no unanswered write can have made it \
                             (a write applied twice, or a lost version)"
                        ),
                        windows.last().map_or(0.0, |w: &(f64, f64)| w.0),
                    );
                }
                pick
            }
        };
        windows.push(w.map_or((0.0, f64::INFINITY), |w| window(&ops[w])));
    }

    // The delete, if the note is gone.
    let deletes: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| matches!(&op.call, Call::Delete { note, .. } if note == id))
        .map(|(i, _)| i)
        .collect();
    let acknowledged: Vec<usize> = deletes
        .iter()
        .copied()
        .filter(|d| matches!(ops[*d].outcome, Outcome::Deleted))
        .collect();
    if acknowledged.len() > 1 {
        found(
            "a note deleted twice",
            acknowledged
                .iter()
                .map(|d| ops[*d].to_string())
                .collect::<Vec<_>>()
                .join("; "),
            ops[acknowledged[1]].invoke,
        );
    }
    let gone = !facts.absent.is_empty() || !acknowledged.is_empty();
    let delete = if gone {
        let compatible = |d: &&usize| match &ops[**d].call {
            Call::Delete { expected, .. } => *expected == 0 || *expected == last,
            _ => false,
        };
        let applied = acknowledged.first().copied().or_else(|| {
            deletes
                .iter()
                .filter(|d| matches!(ops[**d].outcome, Outcome::Unknown(_)))
                .filter(compatible)
                .min_by(|a, b| ops[**a].invoke.total_cmp(&ops[**b].invoke))
                .copied()
        });
        match applied {
            Some(d) => {
                if !compatible(&&d) {
                    found(
                        "a conditional delete applied at another version",
                        format!("{} but the last version is {last}", ops[d]),
                        ops[d].invoke,
                    );
                }
                Some(window(&ops[d]))
            }
            None => {
                found(
                    "a note vanished",
                    "found gone, but no delete can have removed it".into(),
                    facts.absent.first().map_or(0.0, |a| a.0),
                );
                None
            }
        }
    } else {
        None
    };

    // Reads: version v was current at some point of the read.
    let mut delete_window = delete.unwrap_or((f64::INFINITY, f64::INFINITY));
    for r in facts.readings.iter().filter(|r| r.read) {
        let v = r.version as usize;
        if v == 0 || v > windows.len() {
            continue;
        }
        windows[v - 1].1 = windows[v - 1].1.min(r.complete);
        if v < windows.len() {
            windows[v].0 = windows[v].0.max(r.invoke);
        } else {
            delete_window.0 = delete_window.0.max(r.invoke);
        }
    }
    for (_, complete) in &facts.absent {
        delete_window.1 = delete_window.1.min(*complete);
    }
    let mut t = f64::NEG_INFINITY;
    for (i, (lo, hi)) in windows.iter().enumerate() {
        t = t.max(*lo);
        if t > *hi {
            found(
                "writes and reads out of real-time order",
                format!(
                    "v{} must take effect between {lo:.3} and {hi:.3}, after the versions \
                     before it (at {t:.3}): a stale read or a lost acknowledged write",
                    i + 1
                ),
                *hi,
            );
            return;
        }
    }
    if gone {
        t = t.max(delete_window.0);
        if t > delete_window.1 {
            found(
                "writes and reads out of real-time order",
                format!(
                    "the delete must take effect between {:.3} and {:.3}, after v{last} (at {t:.3})",
                    delete_window.0, delete_window.1
                ),
                delete_window.1,
            );
        }
    }
}

/// The calls and events around `anomaly`, as lines.
pub fn excerpt(history: &History, anomaly: &Anomaly) -> Vec<String> {
    let near = |t: f64| (t - anomaly.at).abs() <= 2.0;
    let touches = |op: &Op| match (&anomaly.note, &op.outcome) {
        (Some(id), Outcome::Note(n)) if &n.id == id => true,
        (Some(id), Outcome::Notes(list, _)) => list.iter().any(|n| &n.id == id),
        (Some(id), _) => op.call.note() == Some(id.as_str()),
        (None, _) => true,
    };
    let mut lines: Vec<(f64, String)> = history
        .ops
        .iter()
        .filter(|op| touches(op) && (near(op.invoke) || near(op.complete.min(op.invoke + 60.0))))
        .map(|op| (op.invoke, op.to_string()))
        .collect();
    lines.extend(
        history
            .events
            .iter()
            .filter(|e| near(e.at))
            .map(|e| (e.at, format!("[{:.3}]           {}", e.at, e.what))),
    );
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    lines.into_iter().map(|(_, line)| line).take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTE: &str = "0190-note";

    fn note(version: i64, content: &str) -> Seen {
        Seen {
            id: NOTE.into(),
            owner: "alice".into(),
            version,
            content: content.into(),
        }
    }

    fn op(call: Call, invoke: f64, complete: f64, outcome: Outcome) -> Op {
        Op {
            process: 0,
            instance: 'A',
            owner: "alice".into(),
            call,
            invoke,
            complete,
            outcome,
        }
    }

    fn create(content: &str, at: f64) -> Op {
        op(
            Call::Create {
                content: content.into(),
            },
            at,
            at + 0.1,
            Outcome::Note(note(1, content)),
        )
    }

    fn update(content: &str, expected: i64, invoke: f64, complete: f64, outcome: Outcome) -> Op {
        op(
            Call::Update {
                note: NOTE.into(),
                content: content.into(),
                expected,
                keyed: false,
            },
            invoke,
            complete,
            outcome,
        )
    }

    fn get(invoke: f64, complete: f64, seen: Seen) -> Op {
        op(
            Call::Get { note: NOTE.into() },
            invoke,
            complete,
            Outcome::Note(seen),
        )
    }

    fn history(ops: Vec<Op>, final_note: Option<Seen>) -> History {
        History {
            ops,
            events: Vec::new(),
            final_state: [("alice".to_owned(), final_note.into_iter().collect())].into(),
            end: 100.0,
        }
    }

    fn kinds(history: &History) -> Vec<&'static str> {
        check(history).into_iter().map(|a| a.kind).collect()
    }

    #[test]
    fn a_correct_history_with_unanswered_writes_passes() {
        let h = history(
            vec![
                create("c", 0.0),
                update("a", 0, 1.0, 1.2, Outcome::Note(note(2, "a"))),
                // Unanswered, applied unseen as v3 (only the next write shows it).
                update("lost", 0, 2.0, 5.0, Outcome::Unknown("timeout".into())),
                update("b", 3, 6.0, 6.5, Outcome::Note(note(4, "b"))),
                // Unanswered and never applied.
                update("never", 9, 7.0, 8.0, Outcome::Unknown("timeout".into())),
                get(9.0, 9.1, note(4, "b")),
            ],
            Some(note(4, "b")),
        );
        assert_eq!(kinds(&h), Vec::<&str>::new());
    }

    #[test]
    fn an_update_applied_twice_fails_the_check() {
        // The first history: w4's update is applied as v2, another
        // write makes v3, and w4's retry applies it again as v4.
        let h = history(
            vec![
                create("c", 0.0),
                update("u:w4", 0, 1.0, 2.0, Outcome::Note(note(4, "u:w4"))),
                get(1.2, 1.3, note(2, "u:w4")),
                update("u:w0", 0, 1.4, 1.5, Outcome::Note(note(3, "u:w0"))),
            ],
            Some(note(4, "u:w4")),
        );
        assert!(
            kinds(&h).contains(&"a write applied twice"),
            "{:?}",
            kinds(&h)
        );
    }

    #[test]
    fn an_aborted_write_that_was_applied_fails_the_check() {
        let h = history(
            vec![
                create("c", 0.0),
                update(
                    "mine",
                    1,
                    1.0,
                    2.0,
                    Outcome::Failed(tonic::Code::Aborted, "is at version 3".into()),
                ),
                get(1.1, 1.2, note(2, "mine")),
                update("theirs", 0, 1.3, 1.4, Outcome::Note(note(3, "theirs"))),
            ],
            Some(note(3, "theirs")),
        );
        assert_eq!(kinds(&h), vec!["a refused write was applied"]);
    }

    #[test]
    fn a_lost_acknowledged_write_fails_the_check() {
        // "old" was acknowledged as v2, "newer" as v3; at the end the note
        // holds "old" again, as v4: a late request overwrote "newer".
        let h = history(
            vec![
                create("c", 0.0),
                update("old", 0, 1.0, 1.5, Outcome::Note(note(2, "old"))),
                update("newer", 0, 2.0, 2.1, Outcome::Note(note(3, "newer"))),
            ],
            Some(note(4, "old")),
        );
        assert!(
            kinds(&h).contains(&"a write applied twice"),
            "{:?}",
            kinds(&h)
        );
        // Even unseen at its second version, the extra version is caught.
        let h = history(
            vec![
                create("c", 0.0),
                update("old", 0, 1.0, 1.5, Outcome::Note(note(2, "old"))),
                update("newer", 0, 2.0, 2.1, Outcome::Note(note(3, "newer"))),
                update("last", 0, 3.0, 3.1, Outcome::Note(note(5, "last"))),
            ],
            Some(note(5, "last")),
        );
        assert_eq!(kinds(&h), vec!["a version no write explains"]);
        // And a final state older than an acknowledged write is a lost write.
        let h = history(
            vec![
                create("c", 0.0),
                update("old", 0, 1.0, 1.5, Outcome::Note(note(2, "old"))),
                update("newer", 0, 2.0, 2.1, Outcome::Note(note(3, "newer"))),
            ],
            Some(note(2, "old")),
        );
        assert_eq!(kinds(&h), vec!["writes and reads out of real-time order"]);
    }

    #[test]
    fn a_stale_read_and_a_leak_fail_the_check() {
        let h = history(
            vec![
                create("c", 0.0),
                update("a", 0, 1.0, 1.1, Outcome::Note(note(2, "a"))),
                get(2.0, 2.1, note(1, "c")),
            ],
            Some(note(2, "a")),
        );
        assert_eq!(kinds(&h), vec!["writes and reads out of real-time order"]);
        let mut leak = get(2.0, 2.1, note(2, "a"));
        leak.owner = "bob".into();
        let h = history(
            vec![
                create("c", 0.0),
                update("a", 0, 1.0, 1.1, Outcome::Note(note(2, "a"))),
                leak,
            ],
            Some(note(2, "a")),
        );
        assert!(kinds(&h).contains(&"note seen by another owner"));
    }

    #[test]
    fn a_create_that_made_two_notes_and_a_double_delete_fail_the_check() {
        let mut twin = note(1, "c");
        twin.id = "0190-twin".into();
        let h = History {
            ops: vec![create("c", 0.0)],
            events: Vec::new(),
            final_state: [("alice".to_owned(), vec![note(1, "c"), twin])].into(),
            end: 100.0,
        };
        assert_eq!(kinds(&h), vec!["a create made two notes"]);
        let delete = |at: f64| {
            op(
                Call::Delete {
                    note: NOTE.into(),
                    expected: 0,
                    keyed: false,
                },
                at,
                at + 0.1,
                Outcome::Deleted,
            )
        };
        let h = history(vec![create("c", 0.0), delete(1.0), delete(2.0)], None);
        assert_eq!(kinds(&h), vec!["a note deleted twice"]);
    }
}
