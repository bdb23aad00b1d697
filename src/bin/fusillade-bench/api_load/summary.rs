//! The figures of every scenario, printed as they come (`metric: value`)
//! and gathered into one table at the end.

/// Rows of (scenario, metric, value).
#[derive(Debug, Default)]
pub struct Summary(Vec<[String; 3]>);

impl Summary {
    /// Prints `metric: value` and keeps the row for the table.
    pub fn add(&mut self, scenario: &str, metric: &str, value: impl Into<String>) {
        let value = value.into();
        println!("{metric}: {value}");
        self.0.push([scenario.to_owned(), metric.to_owned(), value]);
    }

    /// The table of every row so far, columns aligned.
    pub fn print(&self) {
        let width = |i: usize| self.0.iter().map(|r| r[i].chars().count()).max();
        let (w0, w1) = (width(0).unwrap_or(0), width(1).unwrap_or(0));
        println!("\n== summary ==");
        for [scenario, metric, value] in &self.0 {
            println!("{scenario:<w0$}  {metric:<w1$}  {value}");
        }
    }
}
