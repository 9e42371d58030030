//! Unit tests of the pool's core bookkeeping (reload and resize: `change.rs`).

use super::*;

const MS: Duration = Duration::from_millis(1);

pub(super) fn pid(n: i32) -> Pid {
    Pid::from_raw(n)
}

/// A pool of `n` slots whose workers (pids 100, 101, ...) are all ready.
pub(super) fn ready_pool(n: usize, now: Instant) -> Pool {
    let mut pool = Pool::new(n, now);
    for (slot, spawn) in pool.due(now) {
        pool.on_spawned(slot, spawn, pid(100 + slot as i32), now);
        pool.on_ready(pid(100 + slot as i32), now);
    }
    pool
}

#[test]
fn every_slot_is_due_at_start_and_none_once_spawned() {
    let now = Instant::now();
    let mut pool = Pool::new(3, now);
    assert_eq!(pool.due(now), [(0, Spawn::Fill), (1, Spawn::Fill), (2, Spawn::Fill)]);
    pool.on_spawned(1, Spawn::Fill, pid(7), now);
    assert_eq!(pool.due(now), [(0, Spawn::Fill), (2, Spawn::Fill)]);
    assert!(!pool.all_ready());
}

#[test]
fn a_worker_that_lived_a_while_is_respawned_at_once() {
    let start = Instant::now();
    let mut pool = ready_pool(2, start);
    let later = start + Duration::from_secs(5);
    let departure = pool.on_exit(pid(101), later);
    assert_eq!(
        departure,
        Departure::Died {
            slot: 1,
            uptime: Duration::from_secs(5),
            was_ready: true,
            respawn_in: Some(Duration::ZERO)
        }
    );
    assert_eq!(pool.due(later), [(1, Spawn::Fill)]);
}

#[test]
fn young_deaths_back_off_doubling_to_ten_seconds() {
    let mut now = Instant::now();
    // Slot 1 keeps a ready worker: slot 0 is not the last one serving.
    let mut pool = ready_pool(2, now);
    let mut delays = Vec::new();
    for n in 0..10 {
        now += 50 * MS;
        let Departure::Died {
            respawn_in: Some(delay),
            ..
        } = pool.on_exit(if n == 0 { pid(100) } else { pid(199 + n) }, now)
        else {
            panic!("expected a death")
        };
        delays.push(delay.as_millis());
        assert!(pool.due(now + delay - MS).is_empty(), "not due before the backoff");
        now += delay;
        assert_eq!(pool.due(now), [(0, Spawn::Fill)]);
        pool.on_spawned(0, Spawn::Fill, pid(200 + n), now);
        pool.on_ready(pid(200 + n), now);
    }
    assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]);
}

/// A kill storm: young deaths of ready workers in every slot. The last slot with
/// a ready worker is respawned at once, so the service is never down for long;
/// the others back off as usual.
#[test]
fn the_last_ready_workers_slot_is_respawned_at_once() {
    let mut now = Instant::now();
    let mut pool = ready_pool(2, now);
    let mut next = 200;
    let mut delays = Vec::new();
    for _ in 0..6 {
        for slot in 0..2 {
            now += 50 * MS;
            let Some(victim) = pool.ready_pid(slot) else { continue };
            let Departure::Died {
                respawn_in: Some(delay),
                ..
            } = pool.on_exit(victim, now)
            else {
                panic!("expected a death")
            };
            delays.push((slot, delay.as_millis()));
            let others_ready = pool.ready_pid(1 - slot).is_some();
            if !others_ready {
                assert_eq!(delay, Duration::ZERO, "the last one serving waits");
            }
            for (due, spawn) in pool.due(now + delay) {
                pool.on_spawned(due, spawn, pid(next), now + delay);
                pool.on_ready(pid(next), now + delay);
                next += 1;
            }
        }
    }
    assert!(
        delays.iter().any(|(_, delay)| *delay > 100),
        "the other slot backs off in full: {delays:?}"
    );
    // Deaths before ready (a crash loop) still back off in full, last or not.
    let mut pool = Pool::new(1, now);
    let mut delays = Vec::new();
    for n in 0..4 {
        pool.on_spawned(0, Spawn::Fill, pid(900 + n), now);
        now += 10 * MS;
        let Departure::Died {
            respawn_in: Some(delay),
            ..
        } = pool.on_exit(pid(900 + n), now)
        else {
            panic!("expected a death")
        };
        delays.push(delay.as_millis());
        now += delay;
    }
    assert_eq!(delays, [100, 200, 400, 800]);
}

#[test]
fn thirty_seconds_up_resets_the_backoff() {
    let mut now = Instant::now();
    // Slot 1 keeps a ready worker: slot 0 is not the last one serving.
    let mut pool = ready_pool(2, now);
    now += 10 * MS;
    pool.on_exit(pid(100), now); // 100 ms
    now += Duration::from_secs(1);
    pool.on_spawned(0, Spawn::Fill, pid(200), now);
    pool.on_ready(pid(200), now);
    now += 10 * MS;
    assert!(matches!(pool.on_exit(pid(200), now), Departure::Died { respawn_in: Some(d), .. } if d == 200 * MS));
    now += Duration::from_secs(1);
    pool.on_spawned(0, Spawn::Fill, pid(300), now);
    pool.on_ready(pid(300), now);
    now += Duration::from_secs(31);
    pool.on_exit(pid(300), now); // long life: at once, and the count is cleared
    pool.on_spawned(0, Spawn::Fill, pid(400), now);
    pool.on_ready(pid(400), now);
    now += 10 * MS;
    assert!(matches!(pool.on_exit(pid(400), now), Departure::Died { respawn_in: Some(d), .. } if d == 100 * MS));
}

#[test]
fn halts_only_when_every_first_worker_failed_to_boot() {
    let now = Instant::now();
    let mut pool = Pool::new(2, now);
    pool.on_spawned(0, Spawn::Fill, pid(1), now);
    pool.on_spawned(1, Spawn::Fill, pid(2), now);
    pool.on_exit(pid(1), now);
    assert!(!pool.first_generation_failed(), "slot 1 has not failed yet");
    pool.on_exit(pid(2), now);
    assert!(pool.first_generation_failed());
}

#[test]
fn a_boot_failure_after_a_ready_worker_never_halts() {
    let now = Instant::now();
    let mut pool = Pool::new(2, now);
    pool.on_spawned(0, Spawn::Fill, pid(1), now);
    pool.on_spawned(1, Spawn::Fill, pid(2), now);
    pool.on_ready(pid(1), now);
    pool.on_exit(pid(2), now);
    pool.on_exit(pid(1), now);
    assert!(!pool.first_generation_failed());
    assert!(matches!(pool.on_exit(pid(3), now), Departure::Unknown));
}

#[test]
fn stop_retires_everyone_and_kills_only_after_the_deadline() {
    let now = Instant::now();
    let mut pool = ready_pool(2, now);
    let deadline = now + Duration::from_secs(30);
    let mut pids = pool.retire_all(deadline);
    pids.sort();
    assert_eq!(pids, [pid(100), pid(101)]);
    assert!(
        pool.due(now + Duration::from_secs(60)).is_empty(),
        "no respawn while stopping"
    );
    assert_eq!(pool.next_wakeup(now), Some(Duration::from_secs(30)));
    assert!(pool.overdue(now).is_empty());
    assert!(matches!(
        pool.on_exit(pid(100), now),
        Departure::Retired { slot: 0, .. }
    ));
    assert_eq!(pool.overdue(deadline), [(1, pid(101))]);
    assert!(pool.overdue(deadline).is_empty(), "each straggler is killed once");
    assert!(!pool.is_empty());
    pool.on_exit(pid(101), deadline);
    assert!(pool.is_empty());
}

#[test]
fn a_fast_stop_shortens_a_graceful_one() {
    let now = Instant::now();
    let mut pool = ready_pool(1, now);
    pool.retire_all(now + Duration::from_secs(30));
    pool.retire_all(now + Duration::from_secs(1));
    assert_eq!(pool.next_wakeup(now), Some(Duration::from_secs(1)));
    pool.retire_all(now + Duration::from_secs(60));
    assert_eq!(pool.next_wakeup(now), Some(Duration::from_secs(1)), "never lengthened");
}

#[test]
fn a_slot_without_a_ready_worker_is_adopted_until_it_has_one() {
    let now = Instant::now();
    let mut pool = ready_pool(3, now);
    assert!(pool.adoptions().is_empty(), "every slot serves itself");
    pool.on_exit(pid(101), now);
    assert_eq!(pool.adoptions(), [(1, pid(102))], "the next slot's worker adopts");
    assert!(pool.adoptions().is_empty(), "adopted once");
    pool.on_spawned(1, Spawn::Fill, pid(200), now);
    assert!(pool.releases().is_empty(), "booting is not ready");
    pool.on_ready(pid(200), now);
    assert_eq!(pool.releases(), [(1, pid(102))]);
    assert!(pool.releases().is_empty());
}

#[test]
fn a_refused_adoption_goes_to_another_worker_and_not_back_until_the_slot_serves_or_a_second_passes() {
    let now = Instant::now();
    let mut pool = ready_pool(3, now);
    pool.on_exit(pid(100), now);
    assert_eq!(pool.adoptions(), [(0, pid(101))]);
    assert!(!pool.adoption_refused(0, pid(102), now), "not its adopter");
    assert!(pool.adoption_refused(0, pid(101), now));
    assert_eq!(pool.adoptions(), [(0, pid(102))], "the next one is asked");
    assert!(pool.adoption_refused(0, pid(102), now));
    assert!(pool.adoptions().is_empty(), "nobody left: the master keeps the socket");
    pool.on_spawned(0, Spawn::Fill, pid(200), now);
    pool.on_ready(pid(200), now);
    assert!(pool.releases().is_empty(), "no adopter to release");
    pool.on_exit(pid(200), now);
    assert_eq!(pool.adoptions(), [(0, pid(101))], "asked again after the slot served");
}

#[test]
fn an_adopter_that_dies_is_replaced_and_nobody_adopts_while_stopping() {
    let now = Instant::now();
    let mut pool = ready_pool(3, now);
    pool.on_exit(pid(100), now);
    assert_eq!(pool.adoptions(), [(0, pid(101))]);
    pool.on_exit(pid(101), now);
    let mut adoptions = pool.adoptions();
    adoptions.sort();
    assert_eq!(adoptions, [(0, pid(102)), (1, pid(102))]);
    pool.retire_all(now);
    pool.on_exit(pid(102), now);
    assert!(pool.adoptions().is_empty());
}

#[test]
fn a_failed_fork_backs_off_the_slot() {
    let now = Instant::now();
    let mut pool = Pool::new(1, now);
    assert_eq!(pool.on_spawn_failed(0, now), 100 * MS);
    assert!(pool.due(now).is_empty());
    assert_eq!(pool.next_wakeup(now), Some(100 * MS));
}

#[test]
fn a_stalled_slot_is_lent_to_a_sibling_until_it_beats_again() {
    let now = Instant::now();
    let mut pool = ready_pool(3, now);
    pool.set_stalled(1, true);
    assert_eq!(pool.stalled(), [1]);
    assert_eq!(pool.adoptions(), [(1, pid(102))], "lent to a serving sibling");
    pool.set_stalled(2, true);
    assert_eq!(pool.releases(), [(1, pid(102))], "a stalled adopter lets go");
    let mut adopted = pool.adoptions();
    adopted.sort();
    assert_eq!(
        adopted,
        [(1, pid(100)), (2, pid(100))],
        "the one serving worker takes both"
    );
    pool.set_stalled(1, false);
    assert_eq!(pool.releases(), [(1, pid(100))], "taken back once it beats");
    // A stalled worker that dies takes the mark with it: its replacement is not stalled.
    pool.on_exit(pid(102), now + Duration::from_secs(5));
    assert!(pool.stalled().is_empty());
}

#[test]
fn a_socket_everyone_refused_is_offered_again_a_second_later() {
    let now = Instant::now();
    let mut pool = ready_pool(2, now);
    pool.on_exit(pid(100), now);
    assert_eq!(pool.adoptions(), [(0, pid(101))]);
    assert!(pool.adoption_refused(0, pid(101), now));
    pool.ask_again(now + ASK_AGAIN_AFTER / 2);
    assert!(pool.adoptions().is_empty(), "not at once");
    pool.ask_again(now + ASK_AGAIN_AFTER);
    assert_eq!(pool.adoptions(), [(0, pid(101))], "asked again: it may have room now");
}
