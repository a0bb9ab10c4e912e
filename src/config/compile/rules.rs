//! One rule as a whole: its fields, its limits, and the bounds only the whole rule tells (state
//! that must fit where it is kept, numbers the Lua mirror must hold exactly).
use std::collections::HashMap;

use serde_json::{Map, Value};

use super::*;
use crate::rate::{Limits, Rate};

impl Compiler {
    pub(super) fn rules(&mut self, path: &str, v: &Value, redis_declared: bool) -> Option<Vec<Rule>> {
        let Value::Array(items) = v else {
            self.wrong_type(path, v, "a list of rules");
            return None;
        };
        if items.is_empty() {
            self.report(path, Some(v), Problem::Empty { what: "rules", expected: "expected at least one rule" });
            return None;
        }
        if items.len() > MAX_RULES {
            self.report(path, None, Problem::TooMany { found: items.len(), max: MAX_RULES });
            return None;
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut rules = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = index(path, i);
            if let Some(Value::String(name)) = item.get("name") {
                if let Some(first) = seen.get(name.as_str()) {
                    self.report(join(&p, "name"), item.get("name"), Problem::DuplicateRule { first: *first });
                    ok = false;
                } else {
                    seen.insert(name, i);
                }
            }
            match self.rule(&p, item, redis_declared) {
                Some(rule) => rules.push(rule),
                None => ok = false,
            }
        }
        // A rule of several limits names them `<rule>.<i>` in RateLimit-Policy: no other rule
        // may be called so, or one name would stand for two policies.
        for rule in rules.iter().filter(|r| r.limits.rates().len() > 1) {
            // Its place in the file (rules that did not compile are not in `rules`).
            let Some(&j) = seen.get(rule.name.as_str()) else { continue };
            for i in 0..rule.limits.rates().len() {
                if let Some(&k) = seen.get(format!("{}.{i}", rule.name).as_str()) {
                    let item = items.get(k);
                    let name = item.and_then(|v| v.get("name"));
                    self.report(join(&index(path, k), "name"), name, Problem::PolicyNameTaken { rule: j, limit: i });
                    ok = false;
                }
            }
        }
        ok.then_some(rules)
    }

    pub(super) fn rule(&mut self, path: &str, v: &Value, redis_declared: bool) -> Option<Rule> {
        let m = self.object(path, v, RULE_FIELDS)?;
        let name = match field(m, "name") {
            Some(v) => self.name(&join(path, "name"), v, "rule name"),
            None => {
                self.report(join(path, "name"), None, Problem::Missing);
                None
            }
        };
        let matcher = match field(m, "match") {
            Some(v) => self.matcher(&join(path, "match"), v),
            None => Some(Match::default()),
        };
        let limits = self.limits(path, m);
        let strategy =
            self.strategy(&join(path, "strategy"), field(m, "strategy"), limits.as_ref().unwrap_or(&Limits::Unlimited));
        let identifier = match field(m, "identifier") {
            Some(v) => self.identifier(&join(path, "identifier"), v),
            None => Some(Identifier { parts: vec![IdentPart::ClientIp], fallback: IdentFallback::ClientIp }),
        };
        let cost = match field(m, "cost") {
            Some(v) => self.cost(&join(path, "cost"), v),
            None => Some(Cost::Fixed(1)),
        };
        let exempt = match field(m, "exempt") {
            Some(v) => self.exempt(&join(path, "exempt"), v),
            None => Some(Exempt::default()),
        };
        let backend = match field(m, "backend") {
            Some(v) => {
                let p = join(path, "backend");
                match self.keyword(&p, v, BACKENDS) {
                    Some("redis") if !redis_declared => {
                        self.report(&p, Some(v), Problem::RedisNotConfigured);
                        None
                    }
                    Some("redis") => Some(Backend::Redis),
                    Some(_) => Some(Backend::Local),
                    None => None,
                }
            }
            None => Some(Backend::Local),
        };
        let on_error = match field(m, "on_error") {
            Some(v) => {
                let p = join(path, "on_error");
                let parsed = self.on_error(&p, v);
                if backend == Some(Backend::Local) {
                    self.report(&p, Some(v), Problem::OnErrorLocal);
                    None
                } else {
                    parsed
                }
            }
            None => Some(OnError::Allow),
        };
        let shadow = match field(m, "shadow") {
            Some(v) => self.boolean(&join(path, "shadow"), v),
            None => Some(false),
        };
        let (per, over_limit) = self.per_message(path, m, cost.as_ref());
        // A message's verdict sends no rate limit fields: the field could only mislead. Judged
        // on `per` as written, so a message rule with another error has this one named too.
        let counts_messages = field(m, "per").and_then(Value::as_str) == Some("message");
        // A trial limit must not change traffic, so clients are not shown it unless asked.
        let advertise = match field(m, "advertise") {
            Some(v) if counts_messages => {
                self.report(join(path, "advertise"), Some(v), Problem::AdvertisePerMessage);
                None
            }
            Some(v) => self.boolean(&join(path, "advertise"), v),
            None => shadow.map(|s| !s),
        };
        // Checked as soon as its parts compiled: a rule with another error (its name, say) has
        // these named in the same run.
        let bounded = match (&limits, &strategy, &cost, backend, &on_error) {
            (Some(limits), Some(strategy), Some(cost), Some(backend), Some(on_error)) => {
                self.bounds(path, m, &Sized { limits, strategy, cost, backend, on_error })
            }
            _ => true,
        };
        let rule = Rule {
            name: name?,
            matcher: matcher?,
            limits: limits?,
            strategy: strategy?,
            identifier: identifier?,
            cost: cost?,
            exempt: exempt?,
            backend: backend?,
            on_error: on_error?,
            shadow: shadow?,
            advertise: advertise?,
            per: per?,
            over_limit: over_limit?,
        };
        bounded.then_some(rule)
    }

    /// `per` and `over_limit`, and the costs each kind of rule can take.
    fn per_message(&mut self, path: &str, m: &Map<String, Value>, cost: Option<&Cost>) -> (Option<Per>, Option<OverLimit>) {
        let per = match field(m, "per") {
            Some(v) => {
                self.keyword(&join(path, "per"), v, PERS).map(|k| if k == "message" { Per::Message } else { Per::Request })
            }
            None => Some(Per::Request),
        };
        let over_limit = match field(m, "over_limit") {
            Some(v) => {
                let p = join(path, "over_limit");
                let parsed = self.over_limit(&p, v);
                if per == Some(Per::Request) {
                    self.report(&p, Some(v), Problem::OverLimitPerRequest);
                    None
                } else {
                    parsed
                }
            }
            None => Some(OverLimit::default()),
        };
        let cost_path = join(path, "cost");
        match (per, cost) {
            (Some(Per::Request), Some(Cost::PayloadBytes)) => {
                self.report(&cost_path, field(m, "cost"), Problem::PayloadBytesPerRequest);
                return (None, over_limit);
            }
            (Some(Per::Message), Some(Cost::Header { .. })) => {
                self.report(&cost_path, field(m, "cost"), Problem::HeaderCostPerMessage);
                return (None, over_limit);
            }
            _ => {}
        }
        (per, over_limit)
    }

    /// What only the whole rule tells: state that must fit where it is kept, and numbers the
    /// Lua mirror must hold exactly.
    fn bounds(&mut self, path: &str, m: &Map<String, Value>, rule: &Sized<'_>) -> bool {
        let mut ok = true;
        let decided_locally = rule.backend == Backend::Local || matches!(rule.on_error, OnError::Fallback { .. });
        let max_cost = match *rule.cost {
            Cost::Fixed(n) => n,
            Cost::Header { max, .. } => max,
            // A message's payload bytes are charged up to one past what any limit admits
            // (`Rule::message_cost`).
            Cost::PayloadBytes => {
                let admissible = rule.limits.rates().iter().map(|r| largest_admissible(rule.strategy, r)).max();
                admissible.unwrap_or(0).saturating_add(1)
            }
        };
        // A fixed cost no limit admits at once would deny every request, each told to come back
        // after a window that will not help; so would a header cost's least (`min`, which a
        // request without the header pays too). The cost, where it is written, and its text.
        let least = match *rule.cost {
            Cost::Fixed(cost) => Some((cost, join(path, "cost"), field(m, "cost"))),
            Cost::Header { min, .. } => {
                Some((min, join(&join(path, "cost"), "min"), field(m, "cost").and_then(|c| c.get("min"))))
            }
            Cost::PayloadBytes => None,
        };
        for (i, rate) in rule.limits.rates().iter().enumerate() {
            if let Some((cost, at, found)) = &least {
                let capacity = largest_admissible(rule.strategy, rate);
                if *cost > capacity {
                    self.report(at.clone(), *found, Problem::CostAboveCapacity { cost: *cost, capacity, rate: *rate });
                    ok = false;
                    continue;
                }
            }
            let largest = lua_largest(rule.strategy, rate, max_cost);
            // Lua's doubles bound a Redis rule; a rule decided here keeps a bucket's level (its
            // units × period) in a 64-bit state, signed for the debt: beyond it the level would
            // saturate below the capacity, and a full bucket would never read as full.
            let problem = if rule.backend == Backend::Redis && largest > LUA_EXACT {
                Some(Problem::NotExactInLua { largest })
            } else if decided_locally && keeps_a_level(rule.strategy) && largest > LOCAL_EXACT {
                Some(Problem::LevelTooLarge { largest })
            } else {
                None
            };
            if let Some(problem) = problem {
                let (p, found) = match field(m, "limits") {
                    Some(list) => (index(&join(path, "limits"), i), list.get(i)),
                    None => (join(path, "limit"), field(m, "limit")),
                };
                self.report(p, found, problem);
                ok = false;
            }
        }
        ok
    }

    pub(super) fn rate(&mut self, path: &str, v: &Value) -> Option<Rate> {
        let Value::String(s) = v else {
            self.wrong_type(path, v, "a rate string such as \"100/min\"");
            return None;
        };
        match Rate::parse(s) {
            Ok(r) => Some(r),
            Err(e) => {
                self.report(path, Some(v), Problem::Rate(e.kind));
                None
            }
        }
    }

    pub(super) fn limits(&mut self, path: &str, m: &Map<String, Value>) -> Option<Limits> {
        match (field(m, "limit"), field(m, "limits")) {
            (Some(_), Some(_)) => {
                self.report(join(path, "limits"), None, Problem::LimitAndLimits);
                None
            }
            (None, None) => {
                self.report(path, None, Problem::NoLimit);
                None
            }
            (Some(v), None) => self.rate(&join(path, "limit"), v).map(|r| limits_of(vec![r])),
            (None, Some(v)) => {
                let p = join(path, "limits");
                if let Value::String(_) = v {
                    // `limits: 10/s` is an easy slip for `limit: 10/s`; a one-item list is meant.
                    self.wrong_type(&p, v, "a list of rate strings (or use \"limit\" for one rate)");
                    return None;
                }
                if v.as_array().is_some_and(Vec::is_empty) {
                    // Required (or "limit"): removing it, as an optional list's advice says,
                    // only trades this error for another.
                    self.report(
                        &p,
                        Some(v),
                        Problem::Empty { what: "limits", expected: "expected at least one rate such as \"100/min\"" },
                    );
                    return None;
                }
                let items = self.list(&p, v, "limits", MAX_LIMITS)?;
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match self.rate(&index(&p, i), item) {
                        Some(r) => out.push(r),
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                let unlimited = out.iter().filter(|r| r.is_unlimited()).count();
                if unlimited > 0 && unlimited < out.len() {
                    for (i, _) in out.iter().enumerate().filter(|(_, r)| r.is_unlimited()) {
                        self.report(index(&p, i), items.get(i), Problem::UnlimitedMixed);
                    }
                    return None;
                }
                Some(limits_of(out))
            }
        }
    }
}

/// The parts of a rule its bounds depend on.
struct Sized<'a> {
    limits: &'a Limits,
    strategy: &'a Strategy,
    cost: &'a Cost,
    backend: Backend,
    on_error: &'a OnError,
}

/// The largest number the decision script forms for `rate` under `strategy` with costs up to
/// `max_cost` (see `src/redis/scripts/`): fluid levels are kept in cost × period_ms units
/// (`(capacity + max_debt + cost) × period`, plus `max_delay × limit` for a queue), the sliding
/// window counter weighs up to two windows in the same units, and the counters of the others
/// stay below `limit + cost`. A conservative bound: each term is counted at its largest.
pub fn lua_largest(strategy: &Strategy, rate: &Rate, max_cost: u64) -> u128 {
    let (limit, period, cost) = (u128::from(rate.limit), u128::from(rate.period_ms), u128::from(max_cost));
    let cap = |burst: Option<u64>| u128::from(burst.filter(|b| *b > 0).unwrap_or(rate.limit)).max(limit);
    match strategy {
        Strategy::FixedWindow | Strategy::SlidingWindowLog { .. } => limit + cost,
        Strategy::SlidingWindowCounter => 2 * (limit + cost) * period,
        Strategy::TokenBucket { burst } | Strategy::LeakyBucket { burst } | Strategy::Gcra { burst } => {
            (cap(*burst) + cost) * period
        }
        Strategy::TokenBucketDebt { burst, max_debt } => (cap(*burst) + u128::from(*max_debt) + cost) * period,
        Strategy::LeakyBucketQueue { burst, max_delay_ms } => (cap(*burst) + cost) * period + u128::from(*max_delay_ms) * limit,
    }
}

/// Whether `strategy`'s state holds a level scaled by the period (the fluid strategies) rather
/// than counts and times.
fn keeps_a_level(strategy: &Strategy) -> bool {
    !matches!(strategy, Strategy::FixedWindow | Strategy::SlidingWindowCounter | Strategy::SlidingWindowLog { .. })
}

/// Rates that passed the checks: `0/0` alone (or only `0/0`s) is no limit at all.
fn limits_of(rates: Vec<Rate>) -> Limits {
    if rates.iter().all(Rate::is_unlimited) {
        Limits::Unlimited
    } else {
        Limits::Rates(rates)
    }
}
