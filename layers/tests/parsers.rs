//! Property tests of the input parsers: arbitrary JSON never panics the
//! geometry or feature parser, and well-formed random input is accepted.

use beeld_layers::collection::GeometryRule;
use beeld_layers::geometry::parse;
use beeld_layers::prepare::prepare;
use beeld_layers::{Collection, Limits, Timestamp};
use proptest::prelude::*;
use serde_json::{Value, json};

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        (-200.0f64..700_000.0).prop_map(|f| json!(f)),
        "[a-zA-Z]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("Point"),
            Just("Polygon"),
            Just("MultiPolygon"),
            Just("GeometryCollection"),
            Just("Feature"),
            Just("LineString")
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("type".to_owned()),
                    Just("coordinates".to_owned()),
                    Just("geometries".to_owned()),
                    Just("geometry".to_owned()),
                    Just("properties".to_owned()),
                    Just("id".to_owned()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_json_never_panics_the_parsers(value in any_json()) {
        let _ = parse(&value, GeometryRule::Point, 1000);
        let _ = parse(&value, GeometryRule::Area, 1000);
        for collection in Collection::ALL {
            let _ = prepare(collection, value.clone(), &Limits::default(), Timestamp(0));
        }
    }

    #[test]
    fn random_closed_polygons_in_range_are_accepted(
        center in (3.0f64..7.0, 50.8f64..53.5),
        radii in proptest::collection::vec(0.001f64..0.2, 3..60),
    ) {
        let n = radii.len();
        let mut ring: Vec<Value> = radii
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let a = std::f64::consts::TAU * i as f64 / n as f64;
                json!([center.0 + r * a.cos(), center.1 + r * a.sin()])
            })
            .collect();
        ring.push(ring[0].clone());
        let geometry = json!({"type": "Polygon", "coordinates": [ring]});
        let shape = parse(&geometry, GeometryRule::Area, 1000);
        prop_assert!(shape.is_ok(), "{:?}", shape.err());
        let feature = json!({"type": "Feature", "id": "h", "geometry": geometry, "properties": {"kind": "flood", "valid_from": "2021-07-14T12:00:00Z"}});
        prop_assert!(prepare(Collection::Hazards, feature, &Limits::default(), Timestamp(0)).is_ok());
    }

    #[test]
    fn points_are_accepted_exactly_when_in_range(x in -400.0f64..400.0, y in -200.0f64..200.0) {
        let ok = parse(&json!({"type": "Point", "coordinates": [x, y]}), GeometryRule::Point, 10).is_ok();
        prop_assert_eq!(ok, (-180.0..=180.0).contains(&x) && (-90.0..=90.0).contains(&y));
    }
}
