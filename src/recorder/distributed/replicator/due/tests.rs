//! The transition function, row by row: each row a stage, an event and the facts of the
//! moment, and the step they give. The rows that defects of the history broke name them
//! (README, "Defects the chaos runs and the simulator found").

use super::*;

const ELECTING: Due = Due::START;
const UNKNOWN_CLAIM: Due = Due::Electing {
    claim_unknown: true,
};
const MINE: u64 = 3;

/// A window of which this instance holds `MINE` ids, due within the delay, with Redis in step
/// and its flush mark set.
fn facts() -> Facts {
    Facts {
        local: MINE,
        overdue: [false, false],
        adopt: false,
        redis: Redis::Flushed,
        lost_since_due: false,
        unsure_claim: None,
    }
}

const OVERDUE: [bool; 2] = [true, false];
const TWICE_OVERDUE: [bool; 2] = [true, true];
const ELECT: Option<Ask> = Some(Ask::Settle {
    overdue: false,
    adopt: false,
});
fn report(count: u64) -> Verdict {
    Verdict::Report(count, Mode::Distributed)
}

#[test]
fn electing_waits_for_its_flush_mark_then_asks_for_an_election() {
    let unflushed = Facts {
        redis: Redis::Unflushed,
        ..facts()
    };
    assert_eq!(
        ELECTING.on(Event::Tick, &unflushed),
        (ELECTING, Verdict::Wait, None)
    );
    assert_eq!(
        ELECTING.on(Event::Tick, &facts()),
        (ELECTING, Verdict::Wait, ELECT)
    );
    let overdue_adopted = Facts {
        overdue: OVERDUE,
        adopt: true,
        ..facts()
    };
    assert_eq!(
        ELECTING.on(Event::Tick, &overdue_adopted).2,
        Some(Ask::Settle {
            overdue: true,
            adopt: true
        })
    );
}

#[test]
fn electing_won_reports_the_global_count() {
    let won = Event::Answered(Settlement::Won(7));
    assert_eq!(ELECTING.on(won, &facts()), (ELECTING, report(7), None));
}

#[test]
fn electing_not_adopted_or_reported_by_another_with_this_instances_ids_skips() {
    for settlement in [
        Settlement::NotAdopted,
        Settlement::ByOther { counted_here: true },
    ] {
        let step = ELECTING.on(Event::Answered(settlement), &facts());
        assert_eq!(step, (ELECTING, Verdict::Skip, None), "{settlement:?}");
    }
    let nothing_here = Facts {
        local: 0,
        ..facts()
    };
    let by_other = Event::Answered(Settlement::ByOther {
        counted_here: false,
    });
    assert_eq!(
        ELECTING.on(by_other, &nothing_here).1,
        Verdict::Skip,
        "a report without this instance's ids, of which it holds none"
    );
}

/// Defect 40: another's report whose record of the marks it counted Redis lost since the
/// window ended was taken to have this instance's ids.
#[test]
fn electing_reported_by_another_not_telling_whether_with_this_instances_ids_is_its_own_count() {
    let lost = Event::Answered(Settlement::LostSinceReport);
    assert_eq!(
        ELECTING.on(lost, &facts()).1,
        Verdict::Degraded(MINE, LOST_SINCE_REPORT)
    );
    let nothing_here = Facts {
        local: 0,
        ..facts()
    };
    assert_eq!(ELECTING.on(lost, &nothing_here).1, Verdict::Skip);
}

/// Defect 4 (b87879c): an instance cut off past its heartbeat took another's report for one
/// with its ids.
#[test]
fn electing_reported_by_another_without_this_instances_ids_amends_once_flushed() {
    let by_other = Event::Answered(Settlement::ByOther {
        counted_here: false,
    });
    assert_eq!(
        ELECTING.on(by_other, &facts()),
        (Due::Amending, Verdict::Wait, Some(Ask::Amend))
    );
    let unflushed = Facts {
        redis: Redis::Unflushed,
        ..facts()
    };
    assert_eq!(
        Due::Amending.on(Event::Tick, &unflushed),
        (Due::Amending, Verdict::Wait, None)
    );
}

#[test]
fn amending_ends_amended_late_or_with_this_instances_own_count() {
    let rows = [
        (Settlement::Amended(9), Verdict::Amended(9)),
        (Settlement::ByOther { counted_here: true }, Verdict::Skip),
        (Settlement::PastAmends, Verdict::Late(MINE)),
        (
            Settlement::LostSinceReport,
            Verdict::Degraded(MINE, LOST_SINCE_REPORT),
        ),
    ];
    for (settlement, verdict) in rows {
        let step = Due::Amending.on(Event::Answered(settlement), &facts());
        assert_eq!(step, (Due::Amending, verdict, None), "{settlement:?}");
    }
}

#[test]
fn not_yet_or_a_failed_amendment_asks_again() {
    let not_yet = Event::Answered(Settlement::NotYet("lease held"));
    assert_eq!(
        ELECTING.on(not_yet, &facts()),
        (ELECTING, Verdict::Wait, ELECT)
    );
    assert_eq!(
        Due::Amending.on(Event::Failed, &facts()),
        (Due::Amending, Verdict::Wait, Some(Ask::Amend))
    );
}

#[test]
fn claimed_goes_on_electing_until_a_replica_holds_the_claim() {
    let claimed = Event::Answered(Settlement::Claimed(4));
    assert_eq!(
        ELECTING.on(claimed, &facts()),
        (Due::Claimed(4), Verdict::Wait, ELECT)
    );
    assert_eq!(
        Due::Claimed(4).on(Event::Failed, &facts()),
        (Due::Claimed(4), Verdict::Wait, ELECT)
    );
    let won = Event::Answered(Settlement::Won(5));
    assert_eq!(Due::Claimed(4).on(won, &facts()).1, report(5));
}

/// Defect 3 (3cbd0e6): a claimant whose claim no replica held yet, cut off, wrote its own
/// count while the others left the window to its claim.
#[test]
fn claimed_reports_the_count_it_read_once_redis_may_have_lost_the_claim_or_past_the_delay() {
    let lost = Facts {
        lost_since_due: true,
        ..facts()
    };
    assert_eq!(
        Due::Claimed(4).on(Event::Tick, &lost),
        (Due::Claimed(4), report(4), Some(Ask::Reassert)),
        "the claim is set again with the report"
    );
    let cut_off = Facts {
        redis: Redis::OutOfStep,
        ..facts()
    };
    assert_eq!(
        Due::Claimed(4).on(Event::Tick, &cut_off),
        (Due::Claimed(4), Verdict::Wait, None)
    );
    let cut_off_overdue = Facts {
        overdue: OVERDUE,
        ..cut_off
    };
    assert_eq!(
        Due::Claimed(4).on(Event::Tick, &cut_off_overdue),
        (Due::Claimed(4), report(4), None)
    );
}

#[test]
fn out_of_step_past_the_delay_writes_its_own_count_or_skips_a_window_to_adopt() {
    let cut_off = Facts {
        redis: Redis::OutOfStep,
        ..facts()
    };
    assert_eq!(
        ELECTING.on(Event::Tick, &cut_off),
        (ELECTING, Verdict::Wait, None)
    );
    let overdue = Facts {
        overdue: OVERDUE,
        ..cut_off
    };
    assert_eq!(
        ELECTING.on(Event::Tick, &overdue).1,
        Verdict::Degraded(MINE, UNREACHABLE)
    );
    assert_eq!(
        Due::Amending.on(Event::Tick, &overdue).1,
        Verdict::Degraded(MINE, UNREACHABLE)
    );
    let adopted = Facts {
        adopt: true,
        local: 0,
        ..overdue
    };
    assert_eq!(
        ELECTING.on(Event::Tick, &adopted).1,
        Verdict::Skip,
        "nothing of it here, and no Redis to tell whether anyone left ids of it"
    );
}

/// Defect 11 (9845ea7): an instance whose election failed on the way wrote its own count
/// though its claim may have been made.
#[test]
fn electing_whose_election_failed_on_the_way_waits_without_redis_until_twice_overdue() {
    let cut_off = Facts {
        redis: Redis::OutOfStep,
        overdue: OVERDUE,
        ..facts()
    };
    assert_eq!(
        ELECTING.on(Event::Failed, &cut_off),
        (UNKNOWN_CLAIM, Verdict::Wait, None)
    );
    let twice = Facts {
        overdue: TWICE_OVERDUE,
        ..cut_off
    };
    assert_eq!(
        UNKNOWN_CLAIM.on(Event::Tick, &twice).1,
        Verdict::Degraded(MINE, UNREACHABLE)
    );
    assert_eq!(
        UNKNOWN_CLAIM.on(Event::Tick, &facts()),
        (UNKNOWN_CLAIM, Verdict::Wait, ELECT),
        "with Redis back, the election learns whose claim it is"
    );
}

/// Defect 38: cut off past twice the delay, a process that may hold a window's claim (an
/// earlier process's kept beside the log, its outcome not learned) wrote its own count,
/// though the others had left the window to the claim: the window was in no other report.
#[test]
fn electing_that_may_hold_the_claim_waits_without_redis_then_writes_the_claims_count() {
    let cut_off = Facts {
        redis: Redis::OutOfStep,
        overdue: OVERDUE,
        unsure_claim: Some(MINE + 4),
        ..facts()
    };
    assert_eq!(
        ELECTING.on(Event::Tick, &cut_off),
        (ELECTING, Verdict::Wait, None),
        "the claim may have been made: until twice overdue"
    );
    let twice = Facts {
        overdue: TWICE_OVERDUE,
        ..cut_off
    };
    assert_eq!(
        ELECTING.on(Event::Tick, &twice).1,
        Verdict::Degraded(MINE + 4, UNREACHABLE_CLAIMED)
    );
    let adopted = Facts {
        adopt: true,
        local: 0,
        ..twice
    };
    assert_eq!(
        ELECTING.on(Event::Tick, &adopted).1,
        Verdict::Degraded(MINE + 4, UNREACHABLE_CLAIMED),
        "an adopted window's claim is its only record"
    );
    let smaller = Facts {
        unsure_claim: Some(MINE - 1),
        ..twice
    };
    assert_eq!(
        ELECTING.on(Event::Tick, &smaller).1,
        Verdict::Degraded(MINE, UNREACHABLE)
    );
}
