//! The `cutpoint` command line: JSON jobs of the built-in operators (a
//! program with functions of its own calls [`cutpoint::main_with`] itself).

fn main() -> std::process::ExitCode {
    cutpoint::main_with(cutpoint::Program::default())
}
