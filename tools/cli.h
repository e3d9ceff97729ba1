// What the files of the `flexattn` command line share: flag parsing and the float64 comparison
// (defined in tools/flexattn_cli.cpp), and the decode command (tools/cli_decode.cpp).
#pragma once

#include <flexattn/flexattn.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace flexattn::cli {

// Flag values are parsed whole: trailing junk, a value out of the flag's range or a negative
// value where none is allowed throws Error naming the flag and the range (the CLI exits 2).
int64_t parse_int(const std::string& flag, const std::string& text, int64_t lo, int64_t hi);
uint64_t parse_u64(const std::string& flag, const std::string& text);
float parse_positive_float(const std::string& flag, const std::string& text);
DType parse_dtype(const std::string& flag, const std::string& text);  // f32, f16 or bf16
Device parse_device(const std::string& flag, const std::string& text);
// A name of tools/stock_variants.h's table, else Error.
void check_variant_name(const std::string& flag, const std::string& name);
// Elements of a tensor of `dims` (flag names for the message); throws Error for a product whose
// f32 byte size does not fit int64, before anything is allocated.
void check_elements(const char* tensor,
                    std::initializer_list<std::pair<const char*, int64_t>> dims);

// ||a - b|| / ||b|| (an infinity of b matched exactly counts as no error), and whether a holds a
// NaN (an unwritten poisoned element).
struct Err {
  double rel = 0.0;
  bool nan = false;
};
Err rel_err(const std::vector<float>& a, const std::vector<double>& b);
// Tolerance on that relative error against float64 for outputs (grad = false) or gradients.
double tolerance(DType t, bool grad);

// `flexattn decode ...` (argv[1] is "decode"): returns the exit code; Error on a bad flag.
int decode(int argc, char** argv);
// Its lines of the CLI's usage text.
extern const char* const kDecodeUsage;
// The demo's decode line on `device`: a short paged decode, checked. False when the check failed
// or the run threw an Error (its message is printed on the line).
bool decode_demo(Device device);

}  // namespace flexattn::cli
