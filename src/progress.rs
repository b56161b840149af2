//! Progress bars that disappear when output is not wanted (tests, `--quiet`, non-terminals).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn bar(len: u64, unit: &str, visible: bool) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if !visible {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let template = format!("{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}}");
    bar.set_style(ProgressStyle::with_template(&template).expect("valid template").progress_chars("=> "));
    bar
}
