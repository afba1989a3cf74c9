pub mod swift;
pub mod tokenizer;
