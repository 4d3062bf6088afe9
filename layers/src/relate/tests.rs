//! The relations engine against a brute-force model of the same picture.

use std::collections::{BTreeMap, BTreeSet};

use geo::{Rect, coord};
use proptest::prelude::*;

use super::*;

fn square(x: f64, y: f64, size: f64) -> Geometry<f64> {
    Geometry::Polygon(
        Rect::new(coord! { x: x, y: y }, coord! { x: x + size, y: y + size }).to_polygon(),
    )
}

/// VR01 west of 5.5°E, VR02 east of it; four municipalities in quarters.
fn engine() -> Relations {
    let vr01 = square(5.0, 51.0, 0.5);
    let vr02 = square(5.5, 51.0, 0.5);
    let gm = [
        square(5.0, 51.0, 0.25),
        square(5.25, 51.0, 0.25),
        square(5.5, 51.0, 0.25),
        square(5.75, 51.0, 0.25),
    ];
    let mut relations = Relations::new(1 << 20);
    relations.set_boundaries(
        [("VR01", &vr01), ("VR02", &vr02)],
        [
            ("GM0001", &gm[0]),
            ("GM0002", &gm[1]),
            ("GM0003", &gm[2]),
            ("GM0004", &gm[3]),
        ],
    );
    relations
}

fn unit_attrs(t: usize, s: usize) -> Attrs {
    Attrs::Unit {
        unit_type: UnitType::ALL[t % UnitType::ALL.len()],
        status: UnitStatus::ALL[s % UnitStatus::ALL.len()],
        home_region: RegionCode::parse("VR01").expect("code"),
    }
}

fn at(n: u64) -> (Seq, Timestamp) {
    (Seq(n), Timestamp(i64::try_from(n).unwrap_or(0)))
}

/// The resolution-`res` ancestor of the point's resolution-9 cell: counts
/// roll up H3's logical hierarchy, so a parent's count is its children's sum.
fn parent_cell(p: Coord<f64>, res: u8) -> u64 {
    let cell9 = LatLng::new(p.y, p.x)
        .expect("valid")
        .to_cell(Resolution::Nine);
    u64::from(
        cell9
            .parent(Resolution::try_from(res).expect("res"))
            .expect("parent"),
    )
}

#[derive(Debug, Clone)]
enum Step {
    Unit(u8, f64, f64, usize, usize),
    Incident(u8, f64, f64),
    Hazard(u8, f64, f64, f64),
    DeleteUnit(u8),
    DeleteHazard(u8),
    /// Same position, new status (when the unit exists).
    Status(u8, usize),
}

fn step() -> impl Strategy<Value = Step> {
    let x = || 4.95f64..6.05;
    let y = || 50.95f64..51.3;
    prop_oneof![
        6 => (0u8..30, x(), y(), 0usize..6, 0usize..4).prop_map(|(i, x, y, t, s)| Step::Unit(i, x, y, t, s)),
        1 => (0u8..10, x(), y()).prop_map(|(i, x, y)| Step::Incident(i, x, y)),
        3 => (0u8..6, x(), y(), 0.0f64..0.2).prop_map(|(i, x, y, s)| Step::Hazard(i, x, y, s)),
        1 => (0u8..30).prop_map(Step::DeleteUnit),
        1 => (0u8..6).prop_map(Step::DeleteHazard),
        2 => (0u8..30, 0usize..4).prop_map(|(i, s)| Step::Status(i, s)),
    ]
}

proptest! {
    #[test]
    fn relations_agree_with_a_brute_force_model(steps in proptest::collection::vec(step(), 1..80)) {
        let mut relations = engine();
        let mut units: BTreeMap<String, (Coord<f64>, Attrs)> = BTreeMap::new();
        let mut incidents: BTreeMap<String, Coord<f64>> = BTreeMap::new();
        let mut hazards: BTreeMap<String, Geometry<f64>> = BTreeMap::new();
        // The membership replayed from events alone.
        let mut replayed: BTreeSet<(String, String)> = BTreeSet::new();
        let mut seen_events = 0;
        for (n, step) in steps.into_iter().enumerate() {
            let (seq, now) = at(n as u64 + 1);
            match step {
                Step::Unit(i, x, y, t, s) => {
                    let id = format!("u{i}");
                    let attrs = unit_attrs(t, s);
                    let p = coord! { x: x, y: y };
                    relations.upsert(Collection::Units, &id.clone().into(), &Shape::Point(p), &attrs, seq, now);
                    units.insert(id, (p, attrs));
                }
                Step::Incident(i, x, y) => {
                    let id = format!("i{i}");
                    let p = coord! { x: x, y: y };
                    let attrs = Attrs::Incident { incident_type: IncidentType::Flood, priority: 1, started_at: Timestamp(0) };
                    relations.upsert(Collection::Incidents, &id.clone().into(), &Shape::Point(p), &attrs, seq, now);
                    incidents.insert(id, p);
                }
                Step::Hazard(i, x, y, size) => {
                    let id = format!("h{i}");
                    let geometry = square(x, y, size);
                    let shape = Shape::area(geometry.clone(), 5);
                    relations.upsert(Collection::Hazards, &id.clone().into(), &shape, &Attrs::Boundary, seq, now);
                    hazards.insert(id, geometry);
                }
                Step::Status(i, s) => {
                    let id = format!("u{i}");
                    if let Some((p, Attrs::Unit { unit_type, .. })) = units.get(&id).copied() {
                        let attrs = unit_attrs(position(UnitType::ALL, &unit_type).into(), s);
                        relations.upsert(Collection::Units, &id.clone().into(), &Shape::Point(p), &attrs, seq, now);
                        units.insert(id, (p, attrs));
                    }
                }
                Step::DeleteUnit(i) => {
                    let id = format!("u{i}");
                    relations.remove(Collection::Units, &id, seq, now);
                    units.remove(&id);
                }
                Step::DeleteHazard(i) => {
                    let id = format!("h{i}");
                    relations.remove(Collection::Hazards, &id, seq, now);
                    hazards.remove(&id);
                }
            }
            let new_events: Vec<Event> = relations.events().since(seen_events).expect("log holds all").cloned().collect();
            for event in new_events {
                prop_assert_eq!(event.n, seen_events + 1, "events are numbered without gaps");
                seen_events = event.n;
                match event.kind {
                    EventKind::Enter { unit, hazard } => prop_assert!(replayed.insert((unit.to_string(), hazard.to_string())), "enter emitted twice"),
                    EventKind::Exit { unit, hazard } => prop_assert!(replayed.remove(&(unit.to_string(), hazard.to_string())), "exit without enter"),
                    _ => {}
                }
            }
            let mut truth = BTreeSet::new();
            for (hazard, geometry) in &hazards {
                let mut want: Vec<String> = units.iter().filter(|(_, (p, _))| covers_brute(geometry, *p)).map(|(u, _)| u.clone()).collect();
                want.sort();
                let got: Vec<String> = relations.units_in_hazard(hazard).expect("known hazard").iter().map(ToString::to_string).collect();
                prop_assert_eq!(&got, &want, "units in {}", hazard);
                truth.extend(want.into_iter().map(|u| (u, hazard.clone())));
            }
            for unit in units.keys() {
                let want: Vec<String> = truth.iter().filter(|(u, _)| u == unit).map(|(_, h)| h.clone()).collect();
                let got: Vec<String> = relations.hazards_of_unit(unit).expect("known unit").iter().map(ToString::to_string).collect();
                prop_assert_eq!(got, want);
            }
            prop_assert_eq!(&replayed, &truth, "events replay to the current membership");
            let mut joined = BTreeSet::new();
            relations.snapshot_pairs(|u, h| {
                let unit = relations.points[u as usize].as_ref().map(|r| r.id.to_string()).unwrap_or_default();
                let hazard = relations.hazard_recs[h as usize].as_ref().map(|r| r.id.to_string()).unwrap_or_default();
                joined.insert((unit, hazard));
            });
            prop_assert_eq!(&joined, &truth, "the snapshot join equals the kept membership");
        }
        // Counters equal a recount.
        for code in ["VR01", "VR02"] {
            let region = RegionCode::parse(code).expect("code");
            let summary = relations.region_summary(region);
            let mut want: BTreeMap<Category, u32> = BTreeMap::new();
            for (p, attrs) in units.values() {
                if relations.place_point(*p).region == Some(region) {
                    *want.entry(Category::of(attrs).expect("unit")).or_default() += 1;
                }
            }
            for p in incidents.values() {
                if relations.place_point(*p).region == Some(region) {
                    let attrs = Attrs::Incident { incident_type: IncidentType::Flood, priority: 1, started_at: Timestamp(0) };
                    *want.entry(Category::of(&attrs).expect("incident")).or_default() += 1;
                }
            }
            let got: BTreeMap<Category, u32> = summary.counts.into_iter().collect();
            prop_assert_eq!(got, want);
        }
        let everywhere = Rect::new(coord! { x: -180.0, y: -90.0 }, coord! { x: 180.0, y: 90.0 });
        for res in H3_RESOLUTIONS {
            let mut want: BTreeMap<(u64, Category), u32> = BTreeMap::new();
            for (p, attrs) in units.values() {
                let cell = parent_cell(*p, res);
                *want.entry((cell, Category::of(attrs).expect("unit"))).or_default() += 1;
            }
            for p in incidents.values() {
                let cell = parent_cell(*p, res);
                *want.entry((cell, Category(N_UNIT_CATEGORIES as u8 + 3))).or_default() += 1;
            }
            let got: BTreeMap<(u64, Category), u32> = relations.h3_counts(res, &everywhere).expect("res").into_iter().map(|(c, k, n)| ((c, k), n)).collect();
            prop_assert_eq!(got, want, "resolution {}", res);
        }
        // Nearest agrees with sorting every unit by distance.
        let from = coord! { x: 5.5, y: 51.1 };
        for status in [None, Some(UnitStatus::Available)] {
            let got: Vec<String> = relations.nearest(from, 5, None, status, None).iter().map(|n| n.id.to_string()).collect();
            let mut all: Vec<(f64, String)> = units
                .iter()
                .filter(|(_, (_, a))| status.is_none() || matches!(a, Attrs::Unit { status: s, .. } if Some(*s) == status))
                .map(|(id, (p, _))| (haversine_m(from, *p), id.clone()))
                .collect();
            all.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
            let want: Vec<String> = all.into_iter().take(5).map(|(_, id)| id).collect();
            prop_assert_eq!(got, want);
        }
    }
}

#[test]
fn a_hazard_growing_over_200_units_emits_200_enters_once() {
    let mut relations = engine();
    for i in 0..200 {
        let p = coord! { x: 5.1 + f64::from(i % 20) * 0.01, y: 51.1 + f64::from(i / 20) * 0.01 };
        relations.upsert(
            Collection::Units,
            &format!("u{i}").into(),
            &Shape::Point(p),
            &unit_attrs(0, 0),
            Seq(1),
            Timestamp(0),
        );
    }
    let (small, big) = (square(5.0, 51.0, 0.01), square(5.05, 51.05, 0.3));
    relations.upsert(
        Collection::Hazards,
        &"flood".into(),
        &Shape::area(small, 5),
        &Attrs::Boundary,
        Seq(2),
        Timestamp(0),
    );
    assert_eq!(relations.events().last(), 0);
    relations.upsert(
        Collection::Hazards,
        &"flood".into(),
        &Shape::area(big.clone(), 5),
        &Attrs::Boundary,
        Seq(3),
        Timestamp(0),
    );
    let enters = relations
        .events()
        .since(0)
        .expect("all")
        .filter(|e| matches!(e.kind, EventKind::Enter { .. }))
        .count();
    assert_eq!(enters, 200);
    // The same polygon again changes nothing and says nothing.
    relations.upsert(
        Collection::Hazards,
        &"flood".into(),
        &Shape::area(big, 5),
        &Attrs::Boundary,
        Seq(4),
        Timestamp(0),
    );
    assert_eq!(relations.events().last(), 200);
    relations.remove(Collection::Hazards, "flood", Seq(5), Timestamp(0));
    let exits = relations
        .events()
        .since(200)
        .expect("all")
        .filter(|e| matches!(e.kind, EventKind::Exit { .. }))
        .count();
    assert_eq!(exits, 200);
}

#[test]
fn coverage_rules_raise_and_clear_alerts_as_units_move() {
    let mut relations = engine();
    let ambulance = unit_attrs(1, 0);
    relations.upsert(
        Collection::Hazards,
        &"plume".into(),
        &Shape::area(square(5.1, 51.1, 0.01), 5),
        &Attrs::Boundary,
        Seq(1),
        Timestamp(0),
    );
    let rule = Rule {
        target: RuleTarget::NearHazard {
            hazard: "plume".into(),
            radius_km: 10.0,
        },
        unit_type: Some(UnitType::Ambulance),
        status: Some(UnitStatus::Available),
        min_units: 2,
    };
    let near = relations
        .add_rule(rule, Seq(1), Timestamp(0))
        .expect("valid rule");
    let vr02 = RegionCode::parse("VR02").expect("code");
    let empty_region = Rule {
        target: RuleTarget::InRegion { region: vr02 },
        unit_type: Some(UnitType::Ambulance),
        status: None,
        min_units: 1,
    };
    let region_rule = relations
        .add_rule(empty_region, Seq(1), Timestamp(0))
        .expect("valid rule");
    let alerts = |r: &Relations| {
        r.rules()
            .filter(|s| s.alert)
            .map(|s| s.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(alerts(&relations), vec![near, region_rule]);
    // About 7 km from the plume: counts. 30 km away: does not.
    relations.upsert(
        Collection::Units,
        &"a1".into(),
        &Shape::Point(coord! { x: 5.2, y: 51.1 }),
        &ambulance,
        Seq(2),
        Timestamp(1),
    );
    relations.upsert(
        Collection::Units,
        &"a2".into(),
        &Shape::Point(coord! { x: 5.55, y: 51.1 }),
        &ambulance,
        Seq(3),
        Timestamp(2),
    );
    assert_eq!(alerts(&relations), vec![near]);
    relations.upsert(
        Collection::Units,
        &"a2".into(),
        &Shape::Point(coord! { x: 5.15, y: 51.05 }),
        &ambulance,
        Seq(4),
        Timestamp(3),
    );
    assert_eq!(alerts(&relations), vec![region_rule]);
    assert_eq!(relations.rule(near).map(|s| s.count), Some(2));
    // Going out of service takes a unit out of the count.
    relations.upsert(
        Collection::Units,
        &"a1".into(),
        &Shape::Point(coord! { x: 5.2, y: 51.1 }),
        &unit_attrs(1, 3),
        Seq(5),
        Timestamp(4),
    );
    assert_eq!(alerts(&relations), vec![near, region_rule]);
    let kinds: Vec<String> = relations
        .events()
        .since(0)
        .expect("all")
        .map(|e| match e.kind {
            EventKind::AlertRaised { rule, count } => format!("raised {rule} {count}"),
            EventKind::AlertCleared { rule, count } => format!("cleared {rule} {count}"),
            _ => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        kinds,
        [
            "raised 1 0",
            "raised 2 0",
            "cleared 2 1",
            "cleared 1 2",
            "raised 2 0",
            "raised 1 1"
        ]
    );
    assert!(relations.remove_rule(near, Seq(6), Timestamp(5)));
    assert_eq!(alerts(&relations), vec![region_rule]);
    assert!(matches!(
        relations.add_rule(
            Rule {
                target: RuleTarget::NearHazard {
                    hazard: "plume".into(),
                    radius_km: -1.0
                },
                unit_type: None,
                status: None,
                min_units: 1
            },
            Seq(6),
            Timestamp(5)
        ),
        Err(RuleError::Radius(_))
    ));
    // The number of rules is bounded; deleting one makes room again.
    let region = |code: &str| Rule {
        target: RuleTarget::InRegion {
            region: crate::attrs::RegionCode::parse(code).expect("code"),
        },
        unit_type: None,
        status: None,
        min_units: 1,
    };
    while relations.rules().count() < MAX_RULES {
        relations
            .add_rule(region("VR03"), Seq(7), Timestamp(6))
            .expect("room");
    }
    assert!(matches!(
        relations.add_rule(region("VR03"), Seq(7), Timestamp(6)),
        Err(RuleError::TooMany)
    ));
    assert!(relations.remove_rule(region_rule, Seq(8), Timestamp(7)));
    assert!(
        relations
            .add_rule(region("VR03"), Seq(8), Timestamp(7))
            .is_ok()
    );
}

#[test]
fn points_are_attributed_and_hazards_list_their_regions_with_area() {
    let relations = engine();
    let place = relations.place_point(coord! { x: 5.3, y: 51.1 });
    assert_eq!(place.region.map(|r| r.to_string()).as_deref(), Some("VR01"));
    assert_eq!(place.municipality_code().as_deref(), Some("GM0002"));
    let by_region = relations.area_by_region(&square(5.4, 51.1, 0.2));
    let codes: Vec<String> = by_region.iter().map(|(c, _)| c.to_string()).collect();
    assert_eq!(codes, ["VR01", "VR02"]);
    // 0.1° × 0.2° at 51.2°N is about 7.0 km × 22.2 km = 155 km² each side... half of it.
    let total: f64 = by_region.iter().map(|(_, km2)| km2).sum();
    assert!((300.0..320.0).contains(&total), "{total}");
    assert!((by_region[0].1 - by_region[1].1).abs() < 2.0);
}

#[test]
fn a_continent_sized_hazard_is_tracked_without_filling_the_grid() {
    let mut relations = engine();
    relations.upsert(
        Collection::Units,
        &"u".into(),
        &Shape::Point(coord! { x: 5.2, y: 51.2 }),
        &unit_attrs(0, 0),
        Seq(1),
        Timestamp(0),
    );
    let huge = square(-60.0, -60.0, 120.0);
    relations.upsert(
        Collection::Hazards,
        &"storm".into(),
        &Shape::area(huge, 5),
        &Attrs::Boundary,
        Seq(2),
        Timestamp(0),
    );
    assert_eq!(relations.units_in_hazard("storm").map(|u| u.len()), Some(1));
    relations.upsert(
        Collection::Units,
        &"v".into(),
        &Shape::Point(coord! { x: 5.3, y: 51.2 }),
        &unit_attrs(0, 0),
        Seq(3),
        Timestamp(0),
    );
    assert_eq!(relations.hazards_of_unit("v").map(|h| h.len()), Some(1));
    relations.remove(Collection::Hazards, "storm", Seq(4), Timestamp(0));
    assert_eq!(relations.hazards_of_unit("v").map(|h| h.len()), Some(0));
}

#[test]
fn the_store_places_features_and_expiry_emits_exits() {
    use crate::{Batch, Draft, Op, Store};
    let draft = |id: &str, shape: Shape, attrs: Attrs| Draft {
        id: Some(id.into()),
        shape,
        properties: "{}".into(),
        attrs,
        observed_at: None,
        expires_at: None,
    };
    let batch = |ops: Vec<Op>| Batch {
        feed: "test".into(),
        received_at: Timestamp(0),
        ops,
    };
    let mut store = Store::default();
    store
        .load(batch(vec![
            Op::Upsert {
                collection: Collection::Regions,
                draft: draft(
                    "VR01",
                    Shape::area(square(5.0, 51.0, 0.5), 5),
                    Attrs::Boundary,
                ),
            },
            Op::Upsert {
                collection: Collection::Municipalities,
                draft: draft(
                    "GM0001",
                    Shape::area(square(5.0, 51.0, 0.5), 5),
                    Attrs::Boundary,
                ),
            },
        ]))
        .expect("load");
    let mut unit = draft(
        "u",
        Shape::Point(coord! { x: 5.1, y: 51.1 }),
        unit_attrs(0, 0),
    );
    unit.expires_at = Some(Timestamp(10));
    store
        .apply(batch(vec![
            Op::Upsert {
                collection: Collection::Hazards,
                draft: draft(
                    "h",
                    Shape::area(square(5.05, 51.05, 0.1), 5),
                    Attrs::Boundary,
                ),
            },
            Op::Upsert {
                collection: Collection::Units,
                draft: unit,
            },
        ]))
        .expect("apply");
    let feature = store.get(Collection::Units, "u").expect("unit");
    assert_eq!(
        feature.place.region.map(|r| r.to_string()).as_deref(),
        Some("VR01")
    );
    assert_eq!(feature.place.municipality_code().as_deref(), Some("GM0001"));
    assert_eq!(
        store
            .get(Collection::Hazards, "h")
            .expect("hazard")
            .place
            .region_codes()
            .len(),
        1
    );
    assert_eq!(store.relations().events().last(), 1);
    store.expire(Timestamp(100));
    let last = store
        .relations()
        .events()
        .since(1)
        .expect("held")
        .next()
        .cloned()
        .expect("an exit");
    assert!(matches!(last.kind, EventKind::Exit { .. }));
    assert_eq!(last.cause, store.seq());
}

#[test]
fn the_event_log_pages_and_reports_gaps() {
    let mut log = EventLog::new(3);
    for n in 1..=5 {
        log.push(
            Seq(n),
            Timestamp(0),
            EventKind::AlertCleared { rule: n, count: 0 },
        );
    }
    let numbers = |after| {
        log.since(after)
            .map(|it| it.map(|e| e.n).collect::<Vec<_>>())
    };
    assert_eq!(numbers(2), Some(vec![3, 4, 5]));
    assert_eq!(numbers(4), Some(vec![5]));
    assert_eq!(numbers(u64::MAX), Some(vec![]));
    assert_eq!(numbers(1), None, "event 2 has left the log");
    assert_eq!((log.oldest(), log.last()), (Some(3), 5));
}

#[test]
fn a_status_change_in_place_moves_counts_but_not_hazards() {
    let mut relations = engine();
    let p = Shape::Point(coord! { x: 5.1, y: 51.1 });
    relations.upsert(
        Collection::Hazards,
        &"h".into(),
        &Shape::area(square(5.0, 51.0, 0.2), 5),
        &Attrs::Boundary,
        Seq(1),
        Timestamp(0),
    );
    relations.upsert(
        Collection::Units,
        &"u".into(),
        &p,
        &unit_attrs(1, 0),
        Seq(2),
        Timestamp(0),
    );
    relations.upsert(
        Collection::Units,
        &"u".into(),
        &p,
        &unit_attrs(1, 2),
        Seq(3),
        Timestamp(0),
    );
    assert_eq!(
        relations.events().last(),
        1,
        "one enter, nothing for the status change"
    );
    assert_eq!(relations.hazards_of_unit("u").map(|h| h.len()), Some(1));
    let vr01 = RegionCode::parse("VR01").expect("code");
    let counts = relations.region_summary(vr01).counts;
    assert_eq!(counts.len(), 1);
    assert_eq!(counts[0].0.status_str(), Some("on_scene"));
    let everywhere = Rect::new(coord! { x: -180.0, y: -90.0 }, coord! { x: 180.0, y: 90.0 });
    let cells = relations.h3_counts(9, &everywhere).expect("res 9");
    assert_eq!(cells.len(), 1);
    assert_eq!(cells[0].1.status_str(), Some("on_scene"));
}
