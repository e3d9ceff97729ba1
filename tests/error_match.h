// Matching flexattn::Error messages in tests: whole-word mentions and the "flexattn::<function>:"
// prefix that every message starts with.
#pragma once

#include <gtest/gtest.h>

#include <cctype>
#include <exception>
#include <functional>
#include <initializer_list>
#include <string>

#include <flexattn/tensor.h>

namespace flexattn::testing {

// `word` occurs in msg delimited by non-identifier characters: "q" matches "q must ..." and
// "q.shape[3]" but not "requires" or "seq".
inline bool mentions(const std::string& msg, const std::string& word) {
  auto ident = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  for (size_t at = msg.find(word); at != std::string::npos; at = msg.find(word, at + 1)) {
    const bool left = at == 0 || !ident(msg[at - 1]);
    const bool right = at + word.size() == msg.size() || !ident(msg[at + word.size()]);
    if (left && right) return true;
  }
  return false;
}

// Runs `call`, expects flexattn::Error whose message starts with "flexattn::<fn>: " and names
// every word; any other outcome (no exception, a std:: exception) is a failure. Returns the
// message ("" when none came).
inline std::string expect_error_from(const char* fn, const std::function<void()>& call,
                                     std::initializer_list<const char*> words) {
  try {
    call();
    ADD_FAILURE() << "no exception; expected flexattn::Error from " << fn;
  } catch (const Error& e) {
    const std::string msg = e.what();
    const std::string prefix = std::string("flexattn::") + fn + ": ";
    EXPECT_EQ(msg.rfind(prefix, 0), 0u) << "\"" << msg << "\" does not start with " << prefix;
    for (const char* w : words)
      EXPECT_TRUE(mentions(msg, w)) << "\"" << msg << "\" does not name " << w;
    return msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a std::exception that is not flexattn::Error: " << e.what();
  }
  return "";
}

}  // namespace flexattn::testing
