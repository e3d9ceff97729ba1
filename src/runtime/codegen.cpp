// Runtime mods: validation of the user's sources and captures (RuntimeScoreMod / RuntimeMaskMod),
// and the C++ text of the functors they become.
#include <cctype>
#include <climits>
#include <memory>
#include <set>
#include <string>

#include "flexattn/param.h"
#include "internal.h"

namespace flexattn {

namespace detail::runtime {
namespace {

const std::set<std::string>& reserved_names() {
  static const std::set<std::string> names = {
      // in scope in the sources
      "score", "b", "h", "q_idx", "kv_idx", "q0", "q1", "k0", "k1", "empty", "partial", "full",
      "unknown", "T", "slot", "TileKind",
      // C++ keywords and alternative tokens
      "alignas", "alignof", "and", "and_eq", "asm", "auto", "bitand", "bitor", "bool", "break",
      "case", "catch", "char", "char8_t", "char16_t", "char32_t", "class", "compl", "concept",
      "const", "consteval", "constexpr", "constinit", "const_cast", "continue", "co_await",
      "co_return", "co_yield", "decltype", "default", "delete", "do", "double", "dynamic_cast",
      "else", "enum", "explicit", "export", "extern", "false", "float", "for", "friend", "goto",
      "if", "inline", "int", "long", "mutable", "namespace", "new", "noexcept", "not", "not_eq",
      "nullptr", "operator", "or", "or_eq", "private", "protected", "public", "register",
      "reinterpret_cast", "requires", "return", "short", "signed", "sizeof", "static",
      "static_assert", "static_cast", "struct", "switch", "template", "this", "thread_local",
      "throw", "true", "try", "typedef", "typeid", "typename", "union", "unsigned", "using",
      "virtual", "void", "volatile", "wchar_t", "while", "xor", "xor_eq"};
  return names;
}

bool is_identifier(const std::string& s) {
  if (s.empty() || !(std::isalpha(static_cast<unsigned char>(s[0])))) return false;
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  }
  return true;
}

// Whether `word` occurs in `text` as a whole identifier.
bool contains_word(const std::string& text, const std::string& word) {
  auto ident = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  for (size_t at = text.find(word); at != std::string::npos; at = text.find(word, at + 1)) {
    const bool left = at == 0 || !ident(text[at - 1]);
    const bool right = at + word.size() >= text.size() || !ident(text[at + word.size()]);
    if (left && right) return true;
  }
  return false;
}

bool blank(const std::string& s) {
  return s.find_first_not_of(" \t\r\n") == std::string::npos;
}

const char* tag_of(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f16: return "F16";
    case DType::bf16: return "Bf16";
    case DType::i32: return "I32";
  }
  return "?";
}

std::shared_ptr<const ModSpec> make_spec(const char* what, ModKind kind, std::string source,
                                         std::vector<Capture> captures, std::string tile_kind) {
  const std::string pre = std::string("flexattn::") + what + ": ";
  if (blank(source)) throw Error(pre + "the source is empty");
  if (captures.size() > static_cast<size_t>(kMaxCaptures)) {
    throw Error(pre + std::to_string(captures.size()) + " captures; at most " +
                std::to_string(kMaxCaptures) + " are allowed");
  }
  std::set<std::string> seen;
  auto spec = std::make_shared<ModSpec>();
  spec->kind = kind;
  spec->code_key = std::string(kind == ModKind::score ? "score" : "mask") + "\n" +
                   string_literal(source) + "\n" + string_literal(tile_kind) + "\n";
  for (const Capture& c : captures) {
    const std::string cap = pre + "capture '" + c.name + "' ";
    if (!is_identifier(c.name)) {
      throw Error(cap + "is not a name: use a C++ identifier (letters, digits and '_', starting "
                        "with a letter)");
    }
    if (reserved_names().count(c.name) != 0) {
      throw Error(cap + "uses a reserved name (one of the names the source sees, or a C++ "
                        "keyword)");
    }
    if (!seen.insert(c.name).second) throw Error(cap + "is given twice");
    if (!c.tensor.defined()) throw Error(cap + "is an undefined tensor");
    for (int d = 0; d < c.tensor.rank(); ++d) {
      if (c.tensor.size(d) > INT_MAX) {
        throw Error(cap + "has a dimension of " + std::to_string(c.tensor.size(d)) +
                    " elements; at most 2^31 - 1 are allowed");
      }
    }
    if (c.grad.defined()) {
      if (kind != ModKind::score) {
        throw Error(cap + "has a grad: only a score_mod's captures can be learnable");
      }
      try {
        (void)Param(c.tensor, const_cast<Tensor&>(c.grad));  // its checks, named below
      } catch (const Error& e) {
        throw Error(cap + "cannot be learnable: " + e.what());
      }
    }
    spec->code_key += c.name + ":" + to_string(c.tensor.dtype()) + ":" +
                      std::to_string(c.tensor.rank()) + (c.grad.defined() ? ":learnable" : "") +
                      "\n";
  }
  spec->source = std::move(source);
  spec->tile_kind = std::move(tile_kind);
  spec->captures = std::move(captures);
  return spec;
}

// The body of one generated member function: the capture views, then the user's text after a
// #line directive naming it (`file`), as an expression wrapped in `wrap(...)` or as statements.
std::string body(const ModSpec& spec, const std::string& text, const char* file,
                 const std::string& wrap) {
  // Using-declarations, not a using-directive: at block scope they hide the C library's
  // tanh(double) & co, which would make tanh(float) ambiguous.
  std::string out =
      "    using ::flexattn::exp, ::flexattn::exp2, ::flexattn::log, ::flexattn::log2, "
      "::flexattn::tanh, ::flexattn::fast_tanh, ::flexattn::sqrt, ::flexattn::sin, "
      "::flexattn::cos, ::flexattn::abs, ::flexattn::pow, ::flexattn::sigmoid, ::flexattn::min, "
      "::flexattn::max, ::flexattn::where, ::flexattn::TileKind, ::flexattn::Dual;\n";
  for (size_t i = 0; i < spec.captures.size(); ++i) {
    const Capture& c = spec.captures[i];
    const std::string tag = "::flexattn::detail::runtime::" + std::string(tag_of(c.tensor.dtype()));
    const std::string rank = std::to_string(c.tensor.rank()), slot = std::to_string(i);
    if (c.grad.defined()) {  // learnable: reads are Param reads (param.h)
      out += "    [[maybe_unused]] const ::flexattn::Param " + c.name +
             " = ::flexattn::Param::of_slot<" + tag + ">(this->slot[" + slot + "], " + rank +
             ");\n";
    } else {
      out += "    [[maybe_unused]] const ::flexattn::detail::runtime::CaptureView<" + tag + ", " +
             rank + "> " + c.name + "{this->slot[" + slot + "]};\n";
    }
  }
  const bool statements = contains_word(text, "return");
  if (statements) {
    out += "#line 1 \"" + std::string(file) + "\"\n" + text + "\n";
  } else {
    out += "    return " + wrap + "(\n#line 1 \"" + std::string(file) + "\"\n" + text + "\n);\n";
  }
  return out;
}

// The params() of a score_mod with learnable captures (param.h): one Param per such capture.
std::string params_of(const ModSpec& spec) {
  std::string list;
  for (size_t i = 0; i < spec.captures.size(); ++i) {
    const Capture& c = spec.captures[i];
    if (!c.grad.defined()) continue;
    list += std::string(list.empty() ? "" : ", ") + "::flexattn::Param::of_slot<"
            "::flexattn::detail::runtime::" + tag_of(c.tensor.dtype()) + ">(this->slot[" +
            std::to_string(i) + "], " + std::to_string(c.tensor.rank()) + ")";
  }
  if (list.empty()) return "";
  return "  auto params() const { return ::flexattn::params(" + list + "); }\n";
}

}  // namespace

std::string string_literal(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == ' ' || c == '_') {
      out += static_cast<char>(c);
    } else {
      const char oct[] = {'\\', static_cast<char>('0' + (c >> 6)),
                          static_cast<char>('0' + ((c >> 3) & 7)), static_cast<char>('0' + (c & 7))};
      out.append(oct, 4);
    }
  }
  return out + "\"";
}

std::string functor_source(const ModSpec* score, const ModSpec* mask) {
  std::string out = "namespace flexattn_rt {\n";
  if (score == nullptr) {
    out += "using Score = ::flexattn::NoopScore;\n";
  } else {
    out += "struct Score : ::flexattn::detail::runtime::ModState {\n"
           "  template <class T>\n"
           "  FLEXATTN_HD T operator()(T score, int b, int h, int q_idx, int kv_idx) const {\n"
           "    (void)score, (void)b, (void)h, (void)q_idx, (void)kv_idx;\n" +
           body(*score, score->source, "score_mod", "T") + "  }\n" + params_of(*score) + "};\n";
  }
  if (mask == nullptr) {
    out += "using Mask = ::flexattn::NoopMask;\n";
  } else {
    out += "struct Mask : ::flexattn::detail::runtime::ModState {\n"
           "  FLEXATTN_HD bool operator()(int b, int h, int q_idx, int kv_idx) const {\n"
           "    (void)b, (void)h, (void)q_idx, (void)kv_idx;\n" +
           body(*mask, mask->source, "mask_mod", "static_cast<bool>") + "  }\n";
    if (!blank(mask->tile_kind)) {
      out += "  FLEXATTN_HD ::flexattn::TileKind tile_kind(int b, int h, int q0, int q1, int k0, "
             "int k1) const {\n"
             "    (void)b, (void)h, (void)q0, (void)q1, (void)k0, (void)k1;\n"
             "    [[maybe_unused]] constexpr ::flexattn::TileKind empty = "
             "::flexattn::TileKind::empty, partial = ::flexattn::TileKind::partial, full = "
             "::flexattn::TileKind::full, unknown = ::flexattn::TileKind::unknown;\n" +
             body(*mask, mask->tile_kind, "tile_kind", "static_cast<::flexattn::TileKind>") +
             "  }\n";
    }
    out += "};\n";
  }
  return out + "}  // namespace flexattn_rt\n";
}

std::string pair_key(const ModSpec* score, const ModSpec* mask) {
  return (score ? score->code_key : std::string("noop score\n")) +
         (mask ? mask->code_key : std::string("noop mask\n"));
}

ModState state_of(const ModSpec* spec) {
  ModState st{};
  if (spec == nullptr) return st;
  for (size_t i = 0; i < spec->captures.size(); ++i) {
    const Tensor& t = spec->captures[i].tensor;
    Slot& s = st.slot[i];
    s.data = t.data();
    s.grad = spec->captures[i].grad.defined()
                 ? static_cast<float*>(const_cast<Tensor&>(spec->captures[i].grad).data())
                 : nullptr;
    int64_t stride = 1;
    for (int d = t.rank() - 1; d >= 0; --d) {
      s.stride[d] = stride;
      s.size[d] = static_cast<int32_t>(t.size(d));
      stride *= t.size(d);
    }
  }
  return st;
}

void check_capture_devices(const char* fn, Device device, const ModSpec* score,
                           const ModSpec* mask) {
  for (const ModSpec* spec : {score, mask}) {
    if (spec == nullptr) continue;
    for (const Capture& c : spec->captures) {
      if (c.tensor.device() != device) {
        throw Error(std::string("flexattn::") + fn + ": the " +
                    (spec->kind == ModKind::score ? "score_mod" : "mask_mod") + "'s capture '" +
                    c.name + "' is on " + to_string(c.tensor.device()) + "; the call runs on " +
                    to_string(device));
      }
    }
  }
}

}  // namespace detail::runtime

RuntimeScoreMod::RuntimeScoreMod(std::string source, std::vector<Capture> captures)
    : spec_(detail::runtime::make_spec("RuntimeScoreMod", detail::runtime::ModKind::score,
                                       std::move(source), std::move(captures), {})) {}
const std::string& RuntimeScoreMod::source() const { return spec_->source; }
const std::vector<Capture>& RuntimeScoreMod::captures() const { return spec_->captures; }

RuntimeMaskMod::RuntimeMaskMod(std::string source, std::vector<Capture> captures,
                               std::string tile_kind)
    : spec_(detail::runtime::make_spec("RuntimeMaskMod", detail::runtime::ModKind::mask,
                                       std::move(source), std::move(captures),
                                       std::move(tile_kind))) {}
const std::string& RuntimeMaskMod::source() const { return spec_->source; }
const std::string& RuntimeMaskMod::tile_kind() const { return spec_->tile_kind; }
const std::vector<Capture>& RuntimeMaskMod::captures() const { return spec_->captures; }

}  // namespace flexattn
