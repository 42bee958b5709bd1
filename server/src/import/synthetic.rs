//! Seeded synthetic arithmetic: short multi-step integer word problems with
//! worked solutions. Small numbers and 2–3 steps keep them within reach of a
//! 135M teacher on a CPU, so learning shows up in minutes, not days.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::NewQuestion;

pub const DEFAULT_COUNT: usize = 200;
pub const MAX_COUNT: usize = 100_000;

const NAMES: [&str; 8] = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro"];
const ITEMS: [&str; 6] = ["apples", "marbles", "stickers", "books", "coins", "shells"];

/// The same seed and count always give the same questions (ChaCha8 is
/// specified bit-for-bit, unlike `StdRng`).
pub fn generate(seed: u64, count: usize) -> Vec<NewQuestion> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let template = rng.random_range(0..4u8);
            let (question, steps, answer) = match template {
                0 => buy_and_give(&mut rng),
                1 => expression(&mut rng),
                2 => change(&mut rng),
                _ => rows(&mut rng),
            };
            let solution = format!("{}\nThe answer is {answer}.", steps.join("\n"));
            NewQuestion {
                source_key: Some(format!("arith-{seed}-{i}")),
                question,
                solution,
                answer: Some(answer.to_string()),
                category: Some(["buy-and-give", "expression", "change", "rows"][template as usize].to_owned()),
                meta: json!({ "steps": steps.len() }),
                references: Vec::new(),
            }
        })
        .collect()
}

fn buy_and_give(rng: &mut ChaCha8Rng) -> (String, Vec<String>, i64) {
    let name = NAMES[rng.random_range(0..NAMES.len())];
    let item = ITEMS[rng.random_range(0..ITEMS.len())];
    let (a, b, c) = (rng.random_range(2..30i64), rng.random_range(2..6i64), rng.random_range(2..10i64));
    let bought = b * c;
    let d = rng.random_range(1..=a + bought - 1);
    let answer = a + bought - d;
    let question = format!(
        "{name} has {a} {item}. {name} buys {b} bags with {c} {item} in each bag, then gives {d} {item} to a friend. How many {item} does {name} have now?"
    );
    let steps = vec![
        format!("{name} buys {b} * {c} = {bought} {item}."),
        format!("After buying, {name} has {a} + {bought} = {} {item}.", a + bought),
        format!("After giving {d} away, {name} has {} - {d} = {answer} {item}.", a + bought),
    ];
    (question, steps, answer)
}

fn expression(rng: &mut ChaCha8Rng) -> (String, Vec<String>, i64) {
    let (a, b, c) = (rng.random_range(1..20i64), rng.random_range(1..20i64), rng.random_range(2..10i64));
    let product = (a + b) * c;
    let d = rng.random_range(1..product);
    let answer = product - d;
    let question = format!("Compute ({a} + {b}) * {c} - {d}.");
    let steps = vec![
        format!("First, {a} + {b} = {}.", a + b),
        format!("Then, {} * {c} = {product}.", a + b),
        format!("Finally, {product} - {d} = {answer}."),
    ];
    (question, steps, answer)
}

fn change(rng: &mut ChaCha8Rng) -> (String, Vec<String>, i64) {
    let name = NAMES[rng.random_range(0..NAMES.len())];
    let (price, n) = (rng.random_range(2..10i64), rng.random_range(2..8i64));
    let cost = price * n;
    let bill = [20i64, 50, 100].into_iter().find(|&b| b > cost).expect("cost is below 80");
    let answer = bill - cost;
    let question = format!(
        "A pencil costs {price} dollars. {name} buys {n} pencils and pays with a {bill}-dollar bill. How much change does {name} get, in dollars?"
    );
    let steps = vec![
        format!("The pencils cost {n} * {price} = {cost} dollars."),
        format!("The change is {bill} - {cost} = {answer} dollars."),
    ];
    (question, steps, answer)
}

fn rows(rng: &mut ChaCha8Rng) -> (String, Vec<String>, i64) {
    let (r, per_row) = (rng.random_range(2..12i64), rng.random_range(2..12i64));
    let total = r * per_row;
    let taken = rng.random_range(1..total);
    let answer = total - taken;
    let question = format!(
        "A hall has {r} rows of chairs with {per_row} chairs in each row. {taken} chairs are taken. How many chairs are free?"
    );
    let steps = vec![
        format!("There are {r} * {per_row} = {total} chairs."),
        format!("Free chairs: {total} - {taken} = {answer}."),
    ];
    (question, steps, answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_questions_and_answers_check_out() {
        let a = generate(7, 50);
        assert_eq!(a, generate(7, 50));
        assert_ne!(a, generate(8, 50));
        for q in &a {
            let answer: i64 = q.answer.as_deref().unwrap().parse().unwrap();
            assert!(answer >= 0, "{}", q.question);
            assert!(q.solution.ends_with(&format!("The answer is {answer}.")));
        }
    }
}
