//! Flows: parents after children on other queues, failure policies, the BullMQ traps (a parent
//! stuck on a failed or removed child, a child retried after its parent was removed), and
//! re-deliveries that change nothing.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use redtower_jobs::{
    Backoff, ChildFailure, ChildOutcome, Flow, Job, JobContext, JobError, JobId, JobOptions,
    JobState, NewJob, Queue, Retention, Worker, WorkerHandle,
};
use serde::{Deserialize, Serialize};

use super::{Store, wait_for};

/// A parent: records what its children reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ship {
    pub order: u64,
}

impl Job for Ship {
    const NAME: &'static str = "ship";
}

/// A child: `fail` fails it for good, `flaky` fails its first attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pick {
    pub sku: String,
}

impl Job for Pick {
    const NAME: &'static str = "pick";
}

fn pick(sku: &str) -> Pick {
    Pick { sku: sku.into() }
}

/// What parents saw: (order, children as (key, outcome)).
type Seen = Arc<Mutex<Vec<(u64, Vec<(String, ChildOutcome)>)>>>;

fn pickers(store: &Store, q: &str) -> WorkerHandle {
    Worker::new(store.clone(), q)
        .poll_interval(Duration::from_millis(50))
        .handle::<Pick>(|p: Pick, ctx: JobContext| async move {
            if p.sku == "fail" {
                return Err(JobError::fatal("out of stock"));
            }
            if p.sku == "flaky" && ctx.attempt() == 1 {
                return Err(JobError::retry("scanner offline").after(Duration::from_millis(10)));
            }
            ctx.set_flow_result(&format!("bin-{}", p.sku))?;
            Ok(())
        })
        .start()
}

/// A worker of parents that records each run with its children's outcomes, not started.
fn shipper(store: &Store, q: &str, seen: &Seen) -> Worker {
    let seen = seen.clone();
    Worker::new(store.clone(), q)
        .poll_interval(Duration::from_millis(50))
        .handle::<Ship>(move |s: Ship, ctx: JobContext| {
            let seen = seen.clone();
            async move {
                let kids = ctx
                    .children()
                    .iter()
                    .map(|c| (c.key.clone(), c.outcome.clone()))
                    .collect();
                seen.lock().unwrap().push((s.order, kids));
                Ok::<_, JobError>(())
            }
        })
}

fn shippers(store: &Store, q: &str, seen: &Seen) -> WorkerHandle {
    shipper(store, q, seen).start()
}

fn completed(result: &str) -> ChildOutcome {
    ChildOutcome::Completed {
        result: Some(serde_json::to_string(result).unwrap()),
    }
}

async fn state(store: &Store, q: &str, id: &JobId) -> Option<JobState> {
    store.get(q, id).await.unwrap().map(|j| j.state)
}

/// The parent waits (state `WaitingChildren`, counted) until its children on two other queues
/// complete, then runs once and reads their results; the outboxes end empty.
pub async fn flow_parent_runs_after_children_on_other_queues(store: Store, q: &str) {
    let (pq, aq, bq) = (format!("{q}-ship"), format!("{q}-a"), format!("{q}-b"));
    let ship = Queue::<Ship>::new(store.clone(), &pq);
    let (qa, qb) = (
        Queue::<Pick>::new(store.clone(), &aq),
        Queue::<Pick>::new(store.clone(), &bq),
    );
    let ids = Flow::new(&ship, Ship { order: 1 })
        .child("mug", &qa, pick("mug"))
        .child("card", &qb, pick("card"))
        .child("flaky", &qa, pick("flaky"))
        .add()
        .await
        .unwrap();
    assert!(!ids.existing);
    assert_eq!(
        state(&store, &pq, &ids.parent).await,
        Some(JobState::WaitingChildren)
    );
    assert_eq!(ship.counts().await.unwrap().waiting_children, 1);
    assert_eq!(ship.counts().await.unwrap().ready, 0);
    let listed = ship.list(JobState::WaitingChildren, 0, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, ids.parent);
    let seen = Seen::default();
    let workers = [
        shippers(&store, &pq, &seen),
        pickers(&store, &aq),
        pickers(&store, &bq),
    ];
    wait_for("the parent completed", || async {
        state(&store, &pq, &ids.parent).await == Some(JobState::Completed)
    })
    .await;
    for w in workers {
        w.shutdown().await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "the parent ran once");
    assert_eq!(
        seen[0],
        (
            1,
            vec![
                ("mug".into(), completed("bin-mug")),
                ("card".into(), completed("bin-card")),
                ("flaky".into(), completed("bin-flaky")),
            ]
        )
    );
    assert_eq!(ship.counts().await.unwrap().waiting_children, 0);
    for cq in [&aq, &bq] {
        assert!(
            store
                .take_outbox(cq, 10, Duration::ZERO)
                .await
                .unwrap()
                .is_empty(),
            "outbox of {cq} drained"
        );
    }
    // Every child's id is as returned, and completed.
    for (key, id) in &ids.children {
        let cq = if key == "card" { &bq } else { &aq };
        assert_eq!(state(&store, cq, id).await, Some(JobState::Completed));
    }
}

/// `FailParent` (the default) fails the parent at once with the child named; `Ignore` runs it
/// without the child; `Continue` runs it after every child, with the failure.
pub async fn flow_child_failure_policies(store: Store, q: &str) {
    let (pq, cq) = (format!("{q}-ship"), format!("{q}-pick"));
    let ship = Queue::<Ship>::new(store.clone(), &pq);
    let picks = Queue::<Pick>::new(store.clone(), &cq);
    let one = JobOptions::new().attempts(1);
    let fail = Flow::new(&ship, Ship { order: 1 })
        .child("ok", &picks, pick("ok"))
        .child("bad", &picks, pick("fail"))
        .add()
        .await
        .unwrap();
    let ignore = Flow::new(&ship, Ship { order: 2 })
        .child("ok", &picks, pick("ok"))
        .child_with(
            "bad",
            &picks,
            pick("fail"),
            one.clone(),
            ChildFailure::Ignore,
        )
        .add()
        .await
        .unwrap();
    let cont = Flow::new(&ship, Ship { order: 3 })
        .child("ok", &picks, pick("ok"))
        .child_with("bad", &picks, pick("fail"), one, ChildFailure::Continue)
        .add()
        .await
        .unwrap();
    let seen = Seen::default();
    let workers = [shippers(&store, &pq, &seen), pickers(&store, &cq)];
    wait_for("both surviving parents ran", || async {
        seen.lock().unwrap().len() == 2
            && state(&store, &pq, &fail.parent).await == Some(JobState::Dead)
    })
    .await;
    for w in workers {
        w.shutdown().await.unwrap();
    }
    let dead = ship.get(&fail.parent).await.unwrap().unwrap();
    let err = dead.last_error.unwrap();
    assert!(
        err.contains("child `bad`") && err.contains("out of stock"),
        "{err}"
    );
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|s| s.0);
    assert_eq!(seen[0], (2, vec![("ok".into(), completed("bin-ok"))]));
    assert_eq!(seen[1].0, 3);
    assert_eq!(seen[1].1[0], ("ok".into(), completed("bin-ok")));
    assert_eq!(seen[1].1[1].0, "bad");
    for ids in [&ignore, &cont] {
        assert_eq!(
            state(&store, &pq, &ids.parent).await,
            Some(JobState::Completed)
        );
    }
    assert!(
        matches!(&seen[1].1[1].1, ChildOutcome::Failed { error } if error.contains("out of stock"))
    );
    assert_eq!(ship.counts().await.unwrap().waiting_children, 0);
}

/// BullMQ trap: a child removed before it ran left its parent waiting for ever. Here the
/// removal is the child's final state: `FailParent` fails the parent, `Continue` runs it.
pub async fn flow_removed_child_never_strands_its_parent(store: Store, q: &str) {
    let (pq, cq) = (format!("{q}-ship"), format!("{q}-pick"));
    let ship = Queue::<Ship>::new(store.clone(), &pq);
    let picks = Queue::<Pick>::new(store.clone(), &cq);
    let strict = Flow::new(&ship, Ship { order: 1 })
        .child("gone", &picks, pick("gone"))
        .add()
        .await
        .unwrap();
    let lenient = Flow::new(&ship, Ship { order: 2 })
        .child_with(
            "gone",
            &picks,
            pick("gone"),
            JobOptions::new(),
            ChildFailure::Continue,
        )
        .child("ok", &picks, pick("ok"))
        .add()
        .await
        .unwrap();
    assert!(picks.remove(&strict.children[0].1).await.unwrap());
    assert!(picks.remove(&lenient.children[0].1).await.unwrap());
    let seen = Seen::default();
    let workers = [shippers(&store, &pq, &seen), pickers(&store, &cq)];
    wait_for("the lenient parent ran", || async {
        seen.lock().unwrap().len() == 1
            && state(&store, &pq, &strict.parent).await == Some(JobState::Dead)
    })
    .await;
    for w in workers {
        w.shutdown().await.unwrap();
    }
    let err = ship
        .get(&strict.parent)
        .await
        .unwrap()
        .unwrap()
        .last_error
        .unwrap();
    assert!(err.contains("was removed"), "{err}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].0, 2);
    assert!(matches!(&seen[0].1[0].1, ChildOutcome::Failed { error } if error == "was removed"));
    assert_eq!(seen[0].1[1], ("ok".into(), completed("bin-ok")));
}

/// BullMQ trap: a child retried after its parent was removed failed ("missing key for parent
/// job"). Here it runs to the end; its report finds no parent and changes nothing; the
/// parent's dependencies are gone with it and nothing brings the parent back.
pub async fn flow_child_retried_after_parent_removed(store: Store, q: &str) {
    let (pq, cq) = (format!("{q}-ship"), format!("{q}-pick"));
    let ship = Queue::<Ship>::new(store.clone(), &pq);
    let picks = Queue::<Pick>::new(store.clone(), &cq);
    let ids = Flow::new(&ship, Ship { order: 1 })
        .child("flaky", &picks, pick("flaky"))
        .child("ok", &picks, pick("ok"))
        .add()
        .await
        .unwrap();
    assert!(ship.remove(&ids.parent).await.unwrap());
    assert_eq!(ship.counts().await.unwrap().waiting_children, 0);
    let seen = Seen::default();
    let workers = [shippers(&store, &pq, &seen), pickers(&store, &cq)];
    wait_for("both children completed", || async {
        picks.counts().await.unwrap().completed == 2
    })
    .await;
    let flaky = picks.get(&ids.children[0].1).await.unwrap().unwrap();
    assert_eq!(
        flaky.attempts_made, 2,
        "retried after its parent was removed"
    );
    wait_for("the outbox drained", || async {
        picks.relay_flows().await.unwrap();
        store
            .take_outbox(&cq, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    for w in workers {
        w.shutdown().await.unwrap();
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "the removed parent never ran"
    );
    assert_eq!(ship.get(&ids.parent).await.unwrap(), None);
    let c = ship.counts().await.unwrap();
    assert_eq!((c.ready, c.waiting_children, c.completed), (0, 0, 0));
}

/// Re-deliveries (a relay that crashed before its ack, a re-sent script) change nothing: the
/// parent is released once. Adding the same flow id again adds nothing.
pub async fn flow_redelivery_and_re_add_change_nothing(store: Store, q: &str) {
    let (pq, cq) = (format!("{q}-ship"), format!("{q}-pick"));
    let ship = Queue::<Ship>::new(store.clone(), &pq);
    let picks = Queue::<Pick>::new(store.clone(), &cq);
    let flow = || {
        Flow::new(&ship, Ship { order: 7 })
            .id("order-7")
            .child("a", &picks, pick("a"))
            .child("b", &picks, pick("b"))
    };
    let ids = flow().add().await.unwrap();
    let again = flow().add().await.unwrap();
    assert!(again.existing);
    assert_eq!(again.parent, ids.parent);
    assert_eq!(again.children, ids.children);
    assert_eq!(
        picks.counts().await.unwrap().ready,
        2,
        "no second set of children"
    );

    // Run both children by hand: their final states go to the outbox.
    let jobs = store
        .work(
            &cq,
            redtower_jobs::WorkRequest::new(vec![], 10, Duration::from_secs(30)),
        )
        .await
        .unwrap()
        .jobs;
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j.flow_child));
    let settle = jobs
        .iter()
        .map(|j| {
            (
                j.lease.clone(),
                redtower_jobs::Settle::CompleteFlowChild {
                    flow_result: Some(format!("\"{}\"", j.lease.id)),
                },
            )
        })
        .collect();
    store
        .work(
            &cq,
            redtower_jobs::WorkRequest::new(settle, 0, Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let msgs = store
        .take_outbox(&cq, 10, Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(msgs.len(), 2);
    // Delivered twice (the first relay "crashed" before acknowledging).
    let first = store
        .deliver(&pq, &cq, msgs.clone(), Retention::default())
        .await
        .unwrap();
    assert_eq!(first, vec![1, 2], "recorded, then released");
    let second = store
        .deliver(&pq, &cq, msgs.clone(), Retention::default())
        .await
        .unwrap();
    assert_eq!(second, vec![0, 0], "a re-delivery changes nothing");
    assert_eq!(state(&store, &pq, &ids.parent).await, Some(JobState::Ready));
    assert_eq!(ship.counts().await.unwrap().ready, 1);
    // The leased messages come back until acknowledged.
    tokio::time::sleep(Duration::from_millis(20)).await; // past their 1 ms lease
    let back = store
        .take_outbox(&cq, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(back.len(), 2);
    store
        .ack_outbox(&cq, back.into_iter().map(|m| m.id).collect())
        .await
        .unwrap();
    assert!(
        store
            .take_outbox(&cq, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    // The parent sees both results, in the flow's order.
    let parent = store
        .work(
            &pq,
            redtower_jobs::WorkRequest::new(vec![], 10, Duration::from_secs(30)),
        )
        .await
        .unwrap()
        .jobs;
    assert_eq!(parent.len(), 1);
    let keys: Vec<_> = parent[0].children.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
    let a: String = parent[0].children[0].decode().unwrap();
    assert_eq!(a, ids.children[0].1.to_string());
}

/// A creator that stopped after adding the parent (before its children): a worker of the
/// parent's queue adds the children from the parent's record, and the flow completes.
pub async fn flow_half_added_is_finished_by_a_worker(store: Store, q: &str) {
    let (pq, cq) = (format!("{q}-ship"), format!("{q}-pick"));
    let ship = Queue::<Ship>::new(store.clone(), &pq);
    // Step 1 of `Flow::add` only, as a creator killed right after it leaves it.
    let backoff = serde_json::to_value(Backoff::default()).unwrap();
    let spec = serde_json::json!([{
        "queue": cq, "key": "mug", "name": "pick", "data": r#"{"sku":"mug"}"#,
        "max": 3, "backoff": backoff, "prio": 0, "delay_ms": 0,
    }]);
    let parent = store
        .add_parent(
            &pq,
            NewJob::new("ship", r#"{"order":9}"#),
            vec![redtower_jobs::FlowDep::new("mug", ChildFailure::FailParent)],
            spec.to_string(),
        )
        .await
        .unwrap();
    let seen = Seen::default();
    let shipper = shipper(&store, &pq, &seen)
        .flow_unsealed_after(Duration::from_millis(100))
        .start();
    let picker = pickers(&store, &cq);
    wait_for("the half-added flow completed", || async {
        state(&store, &pq, parent.id()).await == Some(JobState::Completed)
    })
    .await;
    shipper.shutdown().await.unwrap();
    picker.shutdown().await.unwrap();
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec![(9, vec![("mug".into(), completed("bin-mug"))])]
    );
    let picks = Queue::<Pick>::new(store.clone(), &cq);
    assert_eq!(
        picks.counts().await.unwrap().completed,
        1,
        "one child added"
    );
    assert_eq!(ship.counts().await.unwrap().waiting_children, 0);
}

/// Bad flows are refused before anything is stored.
pub async fn flow_limits(store: Store, q: &str) {
    let ship = Queue::<Ship>::new(store.clone(), q);
    let picks = Queue::<Pick>::new(store.clone(), format!("{q}-pick"));
    let none = Flow::new(&ship, Ship { order: 1 }).add().await;
    assert!(matches!(none, Err(redtower_jobs::Error::InvalidOption(_))));
    let dup = Flow::new(&ship, Ship { order: 1 })
        .child("a", &picks, pick("a"))
        .child("a", &picks, pick("b"))
        .add()
        .await;
    assert!(matches!(dup, Err(redtower_jobs::Error::InvalidOption(_))));
    let mut many = Flow::new(&ship, Ship { order: 1 });
    for i in 0..=redtower_jobs::MAX_CHILDREN {
        many = many.child(i.to_string(), &picks, pick("x"));
    }
    assert!(matches!(
        many.add().await,
        Err(redtower_jobs::Error::InvalidOption(_))
    ));
    let c = ship.counts().await.unwrap();
    assert_eq!((c.waiting_children, c.ready), (0, 0));
}

/// Flows added at the same time, each with one child on a shared queue (adds a store may send
/// together in one call): every child reports to its own parent, every parent runs once with
/// its own child's result.
pub async fn flow_children_added_together_keep_their_parents(store: Store, q: &str) {
    let (pq, cq) = (format!("{q}-ship"), format!("{q}-pick"));
    let ship = Queue::<Ship>::new(store.clone(), &pq);
    let picks = Queue::<Pick>::new(store.clone(), &cq);
    let flows = futures::future::join_all((0..40u64).map(|order| {
        let (ship, picks) = (&ship, &picks);
        async move {
            Flow::new(ship, Ship { order })
                .child("only", picks, pick(&format!("s{order}")))
                .add()
                .await
                .unwrap()
        }
    }))
    .await;
    let mut children: Vec<&JobId> = flows.iter().map(|f| &f.children[0].1).collect();
    children.sort();
    children.dedup();
    assert_eq!(children.len(), 40, "a child job per flow");
    let seen = Seen::default();
    let workers = [shippers(&store, &pq, &seen), pickers(&store, &cq)];
    wait_for("every parent ran", || async {
        seen.lock().unwrap().len() >= 40
    })
    .await;
    for w in workers {
        w.shutdown().await.unwrap();
    }
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|s| s.0);
    let expected: Vec<_> = (0..40u64)
        .map(|order| {
            let result = completed(&format!("bin-s{order}"));
            (order, vec![("only".to_owned(), result)])
        })
        .collect();
    assert_eq!(seen, expected, "each parent once, with its own child");
    for f in &flows {
        assert_eq!(
            state(&store, &pq, &f.parent).await,
            Some(JobState::Completed)
        );
    }
    assert_eq!(ship.counts().await.unwrap().waiting_children, 0);
}
